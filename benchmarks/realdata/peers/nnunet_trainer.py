"""nnU-Net v2's own trainer, shortened to a wall-clock budget ($UNETKIT_NNUNET_SECONDS).

Copied into the nnunet virtual environment's nnunetv2/training/nnUNetTrainer/ by
nnunet_peer.py (nnU-Net finds trainers by class name there). Everything is nnU-Net's: its
plans, network, augmentation, loss, deep supervision and poly schedule. Only the length
changes: epochs of 10 steps (its default 250 take minutes on a CPU) and 2 validation
batches, and the poly schedule's end is moved to the epoch where the time runs out, as
measured after every epoch, so the learning rate reaches 0 at the deadline. Its final
cross-validation prediction is skipped: the held-out test images are predicted instead."""

import os
import time

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class nnUNetTrainer_Timed(nnUNetTrainer):  # noqa: N801 (nnU-Net's naming)
    def run_training(self):
        # set here: nnU-Net records its trainers' __init__ arguments by name
        self.num_iterations_per_epoch = 10
        self.num_val_iterations_per_epoch = 2
        deadline = time.perf_counter() + float(os.environ["UNETKIT_NNUNET_SECONDS"])
        self.on_train_start()
        epoch = self.current_epoch
        while True:
            start = time.perf_counter()
            self.on_epoch_start()
            self.on_train_epoch_start()
            outputs = [self.train_step(next(self.dataloader_train))
                       for _ in range(self.num_iterations_per_epoch)]
            self.on_train_epoch_end(outputs)
            with torch.no_grad():
                self.on_validation_epoch_start()
                outputs = [self.validation_step(next(self.dataloader_val))
                           for _ in range(self.num_val_iterations_per_epoch)]
                self.on_validation_epoch_end(outputs)
            self.on_epoch_end()
            epoch += 1
            per_epoch = time.perf_counter() - start
            epochs_left = int((deadline - time.perf_counter()) / per_epoch)
            self.num_epochs = epoch + max(epochs_left, 0)
            self.lr_scheduler.max_steps = self.num_epochs
            if epochs_left < 1:
                break
        self.on_train_end()

    def perform_actual_validation(self, save_probabilities: bool = False):
        self.print_to_log_file("final validation skipped (the benchmark predicts its test set)")
