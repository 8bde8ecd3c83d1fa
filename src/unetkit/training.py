"""The training loop: data -> augmentation -> model -> loss -> optimizer, validation every
epoch, best/last checkpoints, metrics.csv and figures; resumable and DDP-ready.

Use :func:`train` with a :class:`~unetkit.config.Config`; the command line
(``unetkit train``, ``python train.py``) is a thin layer over it.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler, RandomSampler, Subset
from tqdm.auto import tqdm

from .checkpoint import (
    WEIGHTS,
    CheckpointError,
    build_model,
    load_config,
    load_training_state,
    save_checkpoint,
    unwrap,
)
from .config import Config, class_names_of
from .data.folder import build_datasets, make_loader
from .data.transforms import Augmenter
from .losses import build_loss
from .metrics import MetricTracker, logits_to_labels
from .models.blocks import center_crop, mirror_pad
from .models.unet import nearest_valid_sizes, valid_margin, valid_output_size
from .report import MetricsLog, plot_curves, plot_predictions
from .runtime import Runtime, make_runtime


@dataclass
class TrainResult:
    out: Path
    best: Path
    last: Path
    best_dice: float
    epochs: int
    history: list[dict[str, float]]


def prepare_config(config: Config) -> Config:
    """Resolve the settings that follow from others, before anything is built: the number
    of demo classes, the model's output channels, a valid patch for valid padding."""
    data, model = config.data, config.model
    if data.root is None and data.demo == "multiclass" and data.num_classes == 2:
        data = dataclasses.replace(data, num_classes=4)
    if data.num_classes < 2:
        raise ValueError(f"num_classes counts the background too: >= 2, got {data.num_classes}")
    out_channels = 1 if data.num_classes == 2 else data.num_classes
    model = dataclasses.replace(model, out_channels=out_channels)
    if model.arch == "unet" and model.padding == "valid":
        if valid_output_size(data.patch_size, model.depth) is None:
            below, above = nearest_valid_sizes(data.patch_size, model.depth)
            # Round up: the paper's tiles are valid sizes; a near size changes little.
            data = dataclasses.replace(data, patch_size=above)
        data = dataclasses.replace(data, context=valid_margin(model.depth))
    else:
        data = dataclasses.replace(data, context=0)
    return dataclasses.replace(config, data=data, model=model)


def forward_whole(model: nn.Module, image: torch.Tensor) -> torch.Tensor:
    """Logits for a whole (B,C,H,W) image of any size, (B,K,H,W): same-padding models take
    it directly; a valid-padding U-Net gets the image mirrored by its margin (and up to
    the next valid size) so that its output covers every pixel."""
    plain = unwrap(model)
    if getattr(plain, "padding", "same") != "valid":
        return model(image)
    height, width = image.shape[-2:]
    margin = plain.margin()
    in_h, in_w = plain.valid_input_size(height), plain.valid_input_size(width)
    padded = mirror_pad(image, margin, in_h - height - margin, margin, in_w - width - margin)
    return model(padded)[..., :height, :width]


def _make_optimizer(params, cfg) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=True,
                               weight_decay=cfg.weight_decay)
    raise ValueError(f"optimizer must be adam, adamw or sgd, got {cfg.optimizer!r}")


def _make_scheduler(optimizer, cfg, epochs: int, steps: int):
    """(scheduler, stepped per batch?). Per-batch schedules change smoothly even in short
    runs; reduce-on-plateau needs the validation score, so it steps per epoch.

    Cosine and poly are LambdaLR factors of the step and the CURRENT total, so resuming
    with more epochs stretches the schedule instead of restarting or stopping it (a
    CosineAnnealingLR/PolynomialLR would keep the old total from its saved state).
    """
    sched = torch.optim.lr_scheduler
    total = max(1, epochs * steps)
    if cfg.schedule == "cosine":
        warm = min(cfg.warmup_epochs * steps, total - 1)
        floor = 0.01  # the final lr, as a fraction of cfg.lr

        def cosine(step: int) -> float:
            if step < warm:  # linear warm-up from 5% of the lr
                return 0.05 + 0.95 * step / warm
            progress = min(1.0, (step - warm) / max(1, total - warm))
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

        return sched.LambdaLR(optimizer, cosine), True
    if cfg.schedule == "poly":
        return sched.LambdaLR(
            optimizer, lambda step: max(0.0, 1 - step / total) ** cfg.poly_power), True
    if cfg.schedule == "step":
        return sched.StepLR(optimizer, step_size=cfg.step_size * steps, gamma=cfg.step_gamma), True
    if cfg.schedule == "plateau":
        return sched.ReduceLROnPlateau(optimizer, mode="max", factor=0.5, patience=5), False
    if cfg.schedule == "none":
        return sched.LambdaLR(optimizer, lambda _: 1.0), True
    raise ValueError(f"schedule must be cosine, poly, step, plateau or none, got {cfg.schedule!r}")


def _move(batch: dict, device: torch.device) -> dict:
    return {k: batch[k].to(device, non_blocking=True) for k in ("image", "mask", "weight")}


def _reduce_mean(total: torch.Tensor, count: int, rt: Runtime) -> float:
    pair = torch.stack([total.detach().float(), torch.tensor(float(count), device=total.device)])
    if rt.distributed:
        dist.all_reduce(pair)
    return (pair[0] / pair[1].clamp(min=1)).item()


def train(config: Config, progress: bool = True) -> TrainResult:
    """Train the model described by ``config`` and write its run folder:

        OUT/checkpoints/best, OUT/checkpoints/last   (see unetkit.checkpoint)
        OUT/metrics.csv, OUT/curves.png, OUT/predictions.png, OUT/config.json
    """
    out = Path(config.train.out)
    last_dir, best_dir = out / "checkpoints" / "last", out / "checkpoints" / "best"
    state = None
    if config.train.resume:
        if not last_dir.is_dir():
            raise CheckpointError(f"--resume: no checkpoint to resume at {last_dir}")
        saved = load_config(last_dir)
        # Continue the saved run exactly; only where it runs and for how long may change.
        keep = {k: getattr(config.train, k) for k in
                ("epochs", "device", "out", "plot_every", "compile")}
        state = load_training_state(last_dir)
        if progress and config.train.epochs <= state["epoch"]:
            tqdm.write(f"note: {last_dir} already finished epoch {config.train.epochs}; "
                       "pass a larger --epochs to train on")
        config = dataclasses.replace(saved, train=dataclasses.replace(saved.train, **keep,
                                                                       resume=True))
    elif last_dir.is_dir() and not config.train.overwrite:
        # Never replace a finished or interrupted run by accident.
        raise ValueError(
            f"{out} already holds a training run ({last_dir}); use --resume to continue "
            "it, another --out, or --overwrite to start again there")
    requested = config
    config = prepare_config(config)
    tc = config.train
    rt = make_runtime(tc.device, tc.precision, tc.channels_last)
    torch.manual_seed(tc.seed)

    # ImageNet statistics only for an ImageNet-pretrained encoder (normalize "auto").
    imagenet = config.model.arch == "resnet_unet" and bool(config.model.pretrained)
    train_ds, val_ds, data_cfg = build_datasets(config.data, tc.seed, pretrained=imagenet)
    if not data_cfg.class_names:  # names for reports, predictions and exports
        data_cfg = dataclasses.replace(data_cfg, class_names=tuple(class_names_of(data_cfg)))
    model_cfg = dataclasses.replace(config.model, in_channels=train_ds.num_channels)
    config = dataclasses.replace(config, data=data_cfg, model=model_cfg)
    K, ignore = data_cfg.num_classes, data_cfg.ignore_index

    model = build_model(model_cfg, load_pretrained=state is None)
    if state is not None:
        model.load_state_dict(load_file(str(last_dir / WEIGHTS)))
    model = model.to(rt.device)
    if rt.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if rt.distributed and tc.sync_batchnorm:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if rt.distributed:
        model = DistributedDataParallel(
            model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
    step_model = torch.compile(model) if tc.compile else model

    # With steps_per_epoch, sample "virtual" indices 0..steps*batch-1: the dataset wraps
    # them onto its images with a different random crop each, so no crop repeats.
    virtual = range(tc.steps_per_epoch * tc.batch_size) if tc.steps_per_epoch else train_ds
    if rt.distributed:
        sampler = DistributedSampler(virtual, rt.world_size, rt.rank, shuffle=True,
                                     seed=tc.seed, drop_last=True)
    elif tc.steps_per_epoch:
        sampler = RandomSampler(virtual, generator=torch.Generator())
    else:
        sampler = None
    loader = make_loader(train_ds, tc.batch_size, True, tc.seed, rt.device, sampler=sampler)
    # Validation: every rank scores its own share, no image twice (a DistributedSampler
    # would pad with repeats and bias the summed confusion matrix).
    val_part = Subset(val_ds, range(rt.rank, len(val_ds), rt.world_size))
    val_loader = make_loader(val_part, 1, False, tc.seed, rt.device)
    steps = len(loader)
    if steps == 0:
        raise ValueError(f"no training batch: {len(train_ds)} training images for batch size "
                         f"{tc.batch_size}")

    criterion = build_loss(config.loss, K, ignore)
    optimizer = _make_optimizer(model.parameters(), config.optim)
    scheduler, per_step = _make_scheduler(optimizer, config.optim, tc.epochs, steps)
    scaler = torch.amp.GradScaler(rt.device.type, enabled=rt.dtype == torch.float16)
    augmenter = Augmenter(config.augment, seed=tc.seed)
    start_epoch, best_dice = 1, -math.inf
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        start_epoch, best_dice = int(state["epoch"]) + 1, float(state["best_dice"])

    if rt.is_main:
        out.mkdir(parents=True, exist_ok=True)
        config.save(out / "config.json")
    log = MetricsLog(out / "metrics.csv", resume_from_epoch=start_epoch - 1) if rt.is_main else None
    show = progress and rt.is_main
    if show:
        tqdm.write(f"unetkit: {model_cfg.arch} on {rt.device} ({_precision_name(rt)}), "
                   f"{len(train_ds)} training / {len(val_ds)} validation images, "
                   f"{steps} steps per epoch, writing to {out}")
        if data_cfg.patch_size != requested.data.patch_size:
            out_side = valid_output_size(data_cfg.patch_size, model_cfg.depth)
            tqdm.write(f"note: patch size {requested.data.patch_size} is not a valid input "
                       f"for this valid-padding U-Net; using {data_cfg.patch_size} (output "
                       f"{out_side}x{out_side}, margin {data_cfg.context} px)")

    previews: list = []
    for epoch in range(start_epoch, tc.epochs + 1):
        model.train()
        # Every random stream restarts from (seed, rank, epoch): a resumed run, on any
        # number of ranks, draws exactly what the uninterrupted run would have drawn.
        stream = (tc.seed * 1_000_003 + rt.rank * 7919 + epoch) % 2**62
        augmenter.generator.manual_seed(stream)
        torch.manual_seed(stream + 1)  # dropout
        train_ds.set_epoch(epoch)
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(epoch)
        elif sampler is not None:
            sampler.generator.manual_seed(tc.seed + epoch)
        else:
            loader.generator.manual_seed(tc.seed + epoch)
        loss_sum = torch.zeros((), device=rt.device)
        seen, start = 0, time.perf_counter()
        # disable=None: no bar when the output is not a terminal (logs stay readable).
        bar = tqdm(loader, desc=f"epoch {epoch}/{tc.epochs}", disable=None if show else True,
                   leave=False, unit="batch", dynamic_ncols=True)
        for i, batch in enumerate(bar):
            batch = augmenter(_move(batch, rt.device))
            image = batch["image"]
            if rt.channels_last:
                image = image.contiguous(memory_format=torch.channels_last)
            with rt.autocast():
                logits = step_model(image)
            # Valid padding: the output is the centre of the input, so is the target.
            target = center_crop(batch["mask"], *logits.shape[-2:])
            weight = center_crop(batch["weight"], *logits.shape[-2:])
            loss = criterion(logits.float(), target, weight)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if config.optim.grad_clip:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), config.optim.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            if per_step:
                scheduler.step()
            criterion.check_targets = False  # checked once; avoids a host sync per step
            loss_sum += loss.detach()
            seen += image.shape[0]
            if show and (i % 5 == 4 or i == steps - 1):  # a host sync only every few steps
                rate = seen / (time.perf_counter() - start)
                bar.set_postfix(loss=f"{loss_sum.item() / (i + 1):.4f}",
                                lr=f"{optimizer.param_groups[0]['lr']:.2e}",
                                img_s=f"{rate:.1f}")
        train_time = time.perf_counter() - start
        train_loss = _reduce_mean(loss_sum, steps, rt)

        want_previews = rt.is_main and (epoch % tc.plot_every == 0 or epoch == tc.epochs)
        val_loss, scores, previews = _validate(unwrap(model), val_loader, criterion, K, ignore,
                                               rt, tc.num_preview if want_previews else 0)
        if not per_step:
            scheduler.step(scores["mean_dice"] if not math.isnan(scores["mean_dice"]) else 0.0)
        dice = scores["mean_dice"]
        improved = not math.isnan(dice) and dice > best_dice
        best_dice = dice if improved else best_dice
        row = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
               "val_dice": dice, "val_iou": scores["mean_iou"],
               "val_precision": scores["mean_precision"], "val_recall": scores["mean_recall"],
               "val_pixel_accuracy": scores["pixel_accuracy"],
               **{f"val_dice_{name}": d for name, d in
                  zip(class_names_of(data_cfg), scores["dice"])},
               "lr": optimizer.param_groups[0]["lr"], "seconds": train_time,
               "images_per_s": seen * rt.world_size / max(train_time, 1e-9)}
        if rt.is_main:
            log.append(row)
            resume_state = {
                "epoch": epoch, "best_dice": best_dice, "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict()}
            metrics = {"epoch": epoch, **scores, "val_loss": val_loss}
            save_checkpoint(last_dir, model, config, metrics, resume_state)
            if improved:  # also resumable: fine-tune from the best epoch with --resume
                save_checkpoint(best_dir, model, config, metrics, resume_state)
            if want_previews:
                plot_curves(log.rows, out / "curves.png")
                plot_predictions(previews, out / "predictions.png",
                                 title=f"epoch {epoch}: validation Dice {dice:.3f}")
            if show:
                tqdm.write(f"epoch {epoch:3d}/{tc.epochs}  loss {train_loss:.4f}  "
                           f"val loss {val_loss:.4f}  val Dice {dice:.4f}  "
                           f"IoU {scores['mean_iou']:.4f}  {row['images_per_s']:.1f} img/s"
                           + ("  *best*" if improved else ""))
    if show:
        tqdm.write(f"done: best validation Dice {best_dice:.4f}\n"
                   f"  checkpoint  {best_dir}\n  last        {last_dir}\n"
                   f"  metrics     {out / 'metrics.csv'}\n  curves      {out / 'curves.png'}\n"
                   f"  predictions {out / 'predictions.png'}")
    history = log.rows if log is not None else []
    if rt.distributed:
        dist.barrier()
    return TrainResult(out, best_dir, last_dir, best_dice, tc.epochs, history)


def _precision_name(rt: Runtime) -> str:
    name = {torch.float32: "fp32", torch.bfloat16: "bf16 autocast",
            torch.float16: "fp16 autocast"}[rt.dtype]
    return name + (", channels_last" if rt.channels_last else "")


def _validate(model, loader, criterion, num_classes, ignore, rt: Runtime, num_preview: int):
    """Whole validation images: (mean loss, scores, preview triples)."""
    model.eval()
    tracker = MetricTracker(num_classes, ignore)
    loss_sum, count, previews = torch.zeros((), device=rt.device), 0, []
    with torch.inference_mode(), rt.autocast():
        for batch in loader:
            batch = _move(batch, rt.device)
            image = batch["image"]
            if rt.channels_last:
                image = image.contiguous(memory_format=torch.channels_last)
            logits = forward_whole(model, image).float()
            loss_sum += criterion(logits, batch["mask"], batch["weight"])
            count += 1
            tracker.update(logits, batch["mask"])
            if len(previews) < num_preview:
                previews.append((batch["image"][0].float().cpu().numpy(),
                                 batch["mask"][0].cpu().numpy(),
                                 logits_to_labels(logits)[0].cpu().numpy()))
    tracker.all_reduce()
    return _reduce_mean(loss_sum, count, rt), tracker.compute(), previews
