"""Cellpose 3 (cellpose==3.1.1.3) trained from scratch on the training instances for a
wall-clock budget, then its own flow-following on the test images.

    cellpose-venv/bin/python cellpose_peer.py SET OUT --seconds S

Cellpose trains by epochs; one epoch here is 8 images (one batch of 8 crops), so epochs
are steps. It is given more epochs than fit and stopped at the deadline, keeping the
weights it has (its schedule: warm-up over 10 epochs, then a constant rate; the decay of
its last 100 epochs is never reached)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from cellpose import models, train
from peer_io import Deadline, load_part, report, save_labels


class OutOfTime(Exception):
    pass


def fit(items, epochs: int, deadline: Deadline):
    model = models.CellposeModel(gpu=False, pretrained_model=False, diam_mean=30.0, nchan=2)
    steps = []
    step = model.net.forward  # stop at the deadline, keeping the weights learnt so far

    def forward(*args, **kwargs):
        if model.net.training:
            if deadline.left() <= 0:
                raise OutOfTime
            steps.append(1)
        return step(*args, **kwargs)
    model.net.forward = forward
    images = [im.astype(np.float32) for _, im, _, _ in items]
    labels = [lab.astype(np.int32) for *_, lab in items]
    start = time.perf_counter()
    try:
        train.train_seg(model.net, train_data=images, train_labels=labels, channels=[0, 0],
                        n_epochs=epochs, nimg_per_epoch=8, batch_size=8, min_train_masks=1,
                        save_path=None, model_name=None)
    except OutOfTime:
        pass
    return model, time.perf_counter() - start, len(steps)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("set", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--seconds", type=float, required=True)
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(2)
    items = load_part(args.set, "train", instances=True)
    deadline = Deadline(args.seconds)
    model, train_s, steps = fit(items, 100_000, deadline)
    model.diam_labels = model.net.diam_labels.item()
    start = time.perf_counter()
    for name, image, _, _ in load_part(args.set, "test"):
        masks = model.eval(image.astype(np.float32), channels=[0, 0])[0]
        save_labels(args.out, name, masks)
    report(args.out, train_s=train_s, predict_s=time.perf_counter() - start, steps=steps)


if __name__ == "__main__":
    main()
