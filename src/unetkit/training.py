"""The training loop: data -> augmentation -> model -> loss -> optimizer, validation every
epoch, best/last checkpoints, metrics.csv and figures; resumable and DDP-ready.

Use :func:`train` with a :class:`~unetkit.config.Config`; the command line
(``unetkit train``, ``python train.py``) is a thin layer over it. :func:`train` reads as
its steps: resume or start, build the run (runtime, data, model, optimizer), then per
epoch: train, validate, save, report, and the per-epoch hooks (where loggers plug in).

Longer than our usual 400 lines on purpose: every step works on the one :class:`Run`, and
reading the loop means reading its steps; the optimizers, the divergence guard, the
validation pass, the time budget and the printed lines (``console``) live in their own
modules.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import load_file
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, Subset
from tqdm.auto import tqdm

from .budget import Budget
from .checkpoint import PLAN, WEIGHTS, build_model, save_checkpoint, unwrap
from .config import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Config,
    DataConfig,
    ModelConfig,
    class_names_of,
    target_classes,
)
from .console import announce, report_end, report_epoch
from .data.folder import build_datasets, make_loader
from .data.transforms import Augmenter
from .data.transforms3d import Augmenter3D
from .data.volume_folder import is_volume_data
from .divergence import DivergenceGuard, nonfinite_tensors
from .errors import writing
from .log import get_logger
from .loggers import logger_hooks
from .losses import DeepSupervisionLoss, build_loss
from .models.blocks import center_crop
from .models.registry import (
    pretrained_normalization,
)
from .optim import make_optimizer, make_scheduler
from .prepare import prepare_config
from .report import MetricsLog, plot_curves, plot_predictions
from .resume import confirm as confirm_resume
from .resume import restore_optim, resume_run
from .runtime import Runtime, make_runtime
from .validation import forward_whole, move_batch, reduce_mean, validate

log = get_logger(__name__)

# A hook is called after every epoch, on the main process, with the run and the epoch's
# metrics row (the same row as metrics.csv): the place for loggers such as TensorBoard
# (unetkit.loggers). A hook with a close() method is closed when train() ends.
EpochHook = Callable[["Run", dict[str, float]], None]

__all__ = ["train", "prepare_config", "forward_whole", "Run", "TrainResult", "EpochHook"]


@dataclass
class TrainResult:
    out: Path
    best: Path
    last: Path
    best_dice: float
    epochs: int
    history: list[dict[str, float]]


@dataclass
class Run:
    """Everything one training run works with, built once before the first epoch."""

    config: Config
    rt: Runtime
    out: Path
    model: nn.Module  # maybe wrapped in DistributedDataParallel
    step_model: nn.Module  # ``model``, or torch.compile of it
    train_ds: Any
    val_ds: Any
    loader: DataLoader
    val_loader: DataLoader
    sampler: Any
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    per_step: bool  # scheduler stepped per batch (else per epoch, on the validation Dice)
    scaler: torch.amp.GradScaler
    augmenter: Augmenter | Augmenter3D
    guard: DivergenceGuard
    log: MetricsLog | None
    budget: Budget | None = None  # with train.time: the clock the run stops by
    plan: dict | None = None  # the self-configured plan (plan.json), if any
    start_epoch: int = 1
    best_dice: float = -math.inf
    started: float = field(default_factory=time.monotonic)
    previews: list = field(default_factory=list)

    @property
    def last_dir(self) -> Path:
        return self.out / "checkpoints" / "last"

    @property
    def best_dir(self) -> Path:
        return self.out / "checkpoints" / "best"


def train(config: Config, progress: bool = True, hooks: Sequence[EpochHook] = (),
          plan: dict | None = None, explicit: Iterable[str] | None = None) -> TrainResult:
    """Train the model described by ``config`` and write its run folder:

        OUT/checkpoints/best, OUT/checkpoints/last   (see unetkit.checkpoint)
        OUT/metrics.csv, OUT/curves.png, OUT/predictions.png, OUT/config.json

    With ``config.train.time`` (seconds) the run trains until its time is up instead of
    for ``epochs``, the learning-rate schedule following the clock, and ends with the
    last validation and checkpoint inside the budget. ``plan`` (from
    :func:`unetkit.plan.make_plan`, as a dict) is saved as plan.json in the run folder and
    every checkpoint; its ``planning_seconds`` count against the budget. ``explicit``
    ("section.name" of the settings the user gave; None: those not at their default)
    says what a resumed run is asked to change (:mod:`unetkit.resume`).
    ``hooks`` are called after every epoch on the main process (see :data:`EpochHook`);
    ``train.tensorboard`` adds :class:`unetkit.loggers.TensorBoardLogger` to them.
    Raises SettingError before anything is read or written when a setting is out of
    range, DivergenceError when training diverges, WriteError when a file cannot be
    written (the previous checkpoint stays intact in every case).
    """
    config, state = resume_or_start(config, progress, explicit)
    run = build_run(config, state, plan)
    hooks = [*hooks, *logger_hooks(run.config)]
    try:
        epoch = run_epochs(run, hooks, progress, requested=config)
    finally:
        for hook in hooks:
            if hasattr(hook, "close"):
                hook.close()
    if run.config.data.task == "instances" and run.rt.is_main:
        choose_object_thresholds(run, progress)
    history = run.log.rows if run.log is not None else []
    return TrainResult(run.out, run.best_dir, run.last_dir, run.best_dice, epoch, history)


def run_epochs(run: Run, hooks: Sequence[EpochHook], progress: bool, requested: Config
               ) -> int:
    """The epochs of :func:`train`, from the announcement to the end summary; returns
    the last epoch run."""
    show = progress and run.rt.is_main
    if show:
        announce(run, requested=requested)
    epoch = run.start_epoch - 1
    for epoch in epochs_to_train(run):
        train_loss, seen, seconds = train_one_epoch(run, epoch, show)
        last = time_is_up(run) if run.budget else epoch == run.config.train.epochs
        started = time.perf_counter()
        # A timed run also draws at its first epoch: the end's cost is then measured early.
        want_previews = run.rt.is_main and (epoch % run.config.train.plot_every == 0 or last
                                            or (run.budget is not None and epoch == 1))
        val_loss, scores, run.previews = validate(
            unwrap(run.model), run.val_loader, run.criterion, target_classes(run.config.data),
            run.config.data.ignore_index, run.rt,
            run.config.train.num_preview if want_previews else 0,
            getattr(run.train_ds, "patch", None))
        validated = time.perf_counter()
        row = epoch_row(run, epoch, train_loss, val_loss, scores, seen, seconds)
        improved = update_best(run, row["val_dice"])
        check_weights(run, epoch)
        if run.rt.is_main:
            save_epoch(run, epoch, row, {"epoch": epoch, **scores, "val_loss": val_loss},
                       improved, want_previews)
            if show:
                report_epoch(run, row, improved)
            for hook in hooks:
                hook(run, row)
        account(run, seconds, validated - started, time.perf_counter() - validated)
        if last:
            break
    if show:
        report_end(run)
    if run.rt.distributed:
        dist.barrier()
    return epoch


def choose_object_thresholds(run: Run, progress: bool) -> None:
    """Instance models: the labelling's thresholds chosen on the validation images and
    stored in both checkpoints (:mod:`unetkit.object_tuning`); counted as saving time."""
    from .crossval_postprocess import decide_labelling

    started = time.perf_counter()
    chosen = decide_labelling(run.best_dir, (run.best_dir, run.last_dir), run.val_ds)
    if run.budget is not None:
        run.budget.add("saving", time.perf_counter() - started)
    if progress:
        log.info("objects: seed threshold %.1f, smallest object %d px (chosen on the "
                 "validation images)", chosen["seed_threshold"], chosen["min_object_size"])


def epochs_to_train(run: Run):
    """The epoch numbers to run: up to train.epochs, or with a time budget as many as the
    time allows (the loop ends at the epoch whose training hit the deadline)."""
    if run.budget is None:
        return range(run.start_epoch, run.config.train.epochs + 1)
    # The first epoch always runs (a run has a checkpoint); later ones while time is left.
    return itertools.takewhile(lambda epoch: epoch == 1 or not time_is_up(run),
                               itertools.count(run.start_epoch))


def time_is_up(run: Run) -> bool:
    """The budget's verdict, the same on every rank (rank 0's clock decides)."""
    over = run.budget.training_over()
    if run.rt.distributed:
        flag = torch.tensor([float(over)], device=run.rt.device)
        dist.broadcast(flag, src=0)
        over = bool(flag.item())
    return over


def account(run: Run, training: float, validation: float, saving: float) -> None:
    """Book an epoch's parts against the budget and learn the cost of the run's end."""
    if run.budget is not None:
        run.budget.add("training", training)
        run.budget.add("validation", validation)
        run.budget.add("saving", saving)
        # An instance model's end also predicts the validation images once more and labels
        # them for its thresholds (choose_object_thresholds): about one more validation.
        tuning = validation if run.config.data.task == "instances" else 0.0
        run.budget.record_end(validation + tuning + saving)


def resume_or_start(config: Config, progress: bool, explicit: Iterable[str] | None = None
                    ) -> tuple[Config, dict | None]:
    """(the config to train with, the saved training state or None).

    With ``train.resume`` the saved run continues as it was, but for the settings asked
    for (``explicit``; see :mod:`unetkit.resume`, which refuses those that would change
    what the run is). Without it, a folder that already holds a run is refused unless
    ``train.overwrite``. Settings that depend on each other are checked first
    (:func:`prepare_config`), so a bad one is refused before anything is read.
    """
    if config.train.resume:
        return resume_run(config, explicit, progress)
    out = Path(config.train.out)
    last_dir = out / "checkpoints" / "last"
    prepare_config(config)  # refuse bad settings before touching the disk
    if last_dir.is_dir() and not config.train.overwrite:
        # Never replace a finished or interrupted run by accident.
        raise ValueError(
            f"{out} already holds a training run ({last_dir}); use --resume to continue "
            "it, another --out, or --overwrite to start again there")
    return config, None


def build_run(requested: Config, state: dict | None, plan: dict | None = None) -> Run:
    """Runtime, datasets, model, loaders, loss, optimizer, schedule and log of a run, the
    model and optimizer restored from ``state`` when resuming."""
    config = prepare_config(requested)
    tc = config.train
    budget = start_budget(tc.time, state, plan)
    if state is not None and plan is None:
        plan = read_plan(Path(tc.out) / "checkpoints" / "last")
    rt = make_runtime(tc.device, tc.precision, tc.channels_last)
    torch.manual_seed(tc.seed)
    train_ds, val_ds, built = build_data(config)
    if state is not None:  # the data must fit the run's network (channels, 2D/3D)
        confirm_resume(config, built, state, show=rt.is_main)
    config = built
    if train_ds.spatial_dims == 3:  # channels_last is a 4-D layout
        rt = dataclasses.replace(rt, channels_last=False)
    out = Path(tc.out)
    model, step_model = place_model(config, rt, out / "checkpoints" / "last" if state else None)
    loader, val_loader, sampler = make_loaders(train_ds, val_ds, config, rt)
    optimizer = make_optimizer(model.parameters(), config.optim)
    scheduler, per_step = make_scheduler(optimizer, config.optim, tc.epochs, len(loader),
                                         budget.fraction if budget else None)
    scaler = torch.amp.GradScaler(rt.device.type, enabled=rt.dtype == torch.float16)
    start_epoch, best_dice = 1, -math.inf
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        restore_optim(optimizer, scheduler, config, state)  # a new lr, weight decay...
        start_epoch, best_dice = int(state["epoch"]) + 1, float(state["best_dice"])
    log = None
    if rt.is_main:
        with writing("the run's config", out / "config.json"):
            out.mkdir(parents=True, exist_ok=True)
            config.save(out / "config.json")
            if plan is not None:
                (out / PLAN).write_text(json.dumps(plan, indent=2) + "\n")
        log = MetricsLog(out / "metrics.csv", resume_from_epoch=start_epoch - 1)
    guard = DivergenceGuard(tc.max_bad_steps, tc.max_loss_factor, config.optim.lr,
                            scaled_fp16=scaler.is_enabled())
    criterion = build_loss(config.loss, target_classes(config.data), config.data.ignore_index)
    if config.model.deep_supervision:  # every decoder level's output (unetkit.deep_supervision)
        criterion = DeepSupervisionLoss.for_model(criterion, unwrap(model))
    if budget is not None:
        budget.add("start-up", budget.elapsed() - sum(budget.parts.values()))
    return Run(config, rt, out, model, step_model, train_ds, val_ds, loader, val_loader,
               sampler, criterion, optimizer, scheduler, per_step, scaler,
               make_augmenter(config, train_ds.spatial_dims), guard, log, budget, plan,
               start_epoch, best_dice)


def make_augmenter(config: Config, spatial_dims: int):
    """The batch augmentation for images, or its 3D counterpart for volumes."""
    if spatial_dims == 3:
        return Augmenter3D(config.augment, config.data.spacing, seed=config.train.seed)
    return Augmenter(config.augment, seed=config.train.seed)


def start_budget(seconds: float | None, state: dict | None, plan: dict | None
                 ) -> Budget | None:
    """The run's clock: started now, less what planning (or the resumed run) used."""
    if seconds is None:
        return None
    if state:  # resumed: what the run had used, and the end cost it had measured
        return Budget(seconds, used=float(state.get("budget_used", 0.0)),
                      end_cost=state.get("budget_end_cost"), measured=True,
                      used_by="before resuming")
    if plan is not None:
        return Budget(seconds, used=float(plan.get("planning_seconds", 0.0)),
                      end_cost=plan.get("end_seconds"))
    return Budget(seconds)


def read_plan(folder: Path) -> dict | None:
    """The plan.json a checkpoint was trained with, or None."""
    try:
        return json.loads((folder / PLAN).read_text())
    except (OSError, ValueError):
        return None


def build_data(config: Config):
    """(train dataset, validation dataset, config with the data's statistics, class names
    and channel count filled in)."""
    # normalize "auto": the statistics the encoder's pretrained weights expect, if any.
    stats, data = pretrained_normalization(config.model), config.data
    imagenet = stats == (IMAGENET_MEAN, IMAGENET_STD)
    if stats is not None and not imagenet and data.normalize == "auto":
        data = dataclasses.replace(data, normalize="dataset", mean=stats[0], std=stats[1])
    volumes = config.model.spatial_dims == 3 or is_volume_data(data)
    train_ds, val_ds, data_cfg = build_datasets(data, config.train.seed, pretrained=imagenet,
                                                volumes=volumes)
    # Names for reports, predictions and exports (an instance model's are its own classes).
    if data_cfg.task == "instances" or not data_cfg.class_names:
        data_cfg = dataclasses.replace(data_cfg, class_names=tuple(class_names_of(data_cfg)))
    model_cfg = dataclasses.replace(config.model, in_channels=train_ds.num_channels)
    if volumes:
        model_cfg = volume_model(model_cfg, data_cfg.spacing)
        if model_cfg.padding == "valid":
            data_cfg = valid_volume_patch(model_cfg, data_cfg, train_ds)
    return train_ds, val_ds, dataclasses.replace(config, data=data_cfg, model=model_cfg)


def volume_model(model: ModelConfig, spacing: tuple[float, ...]) -> ModelConfig:
    """The model config for volumes: 3D, and a U-Net planned for the data's voxel spacing
    (the ResNet encoder pools every axis alike, so it gets none)."""
    return dataclasses.replace(model, spatial_dims=3,
                               spacing=tuple(spacing) if model.arch == "unet" else ())


def valid_volume_patch(model: ModelConfig, data: DataConfig, train_ds) -> DataConfig:
    """Valid padding in 3D, as the paper's overlap-tile in 2D: the patch (the network's
    input) rounded up per axis to a size the network takes, and the volumes mirrored by
    the network's margin so that its output reaches every voxel, borders included."""
    with torch.device("meta"):
        net = build_model(model, load_pretrained=False)
    patch = net.valid_input_at_least(train_ds.patch)
    train_ds.patch, train_ds.context = patch, net.margins()
    return dataclasses.replace(data, patch_depth=patch[0], patch_size=patch[1])


def place_model(config: Config, rt: Runtime, resume_from: Path | None
                ) -> tuple[nn.Module, nn.Module]:
    """(model on the device, in its layout, DDP-wrapped under torchrun; the model the
    training step calls: the same, or torch.compile of it)."""
    model = build_model(config.model, load_pretrained=resume_from is None)
    if resume_from is not None:
        model.load_state_dict(load_file(str(resume_from / WEIGHTS)))
    model = model.to(rt.device)
    if rt.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if rt.distributed and config.train.sync_batchnorm:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if rt.distributed:
        model = DistributedDataParallel(
            model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
    return model, (torch.compile(model) if config.train.compile else model)


def make_loaders(train_ds, val_ds, config: Config, rt: Runtime):
    """(training loader, validation loader, training sampler or None)."""
    tc, workers = config.train, config.data.num_workers
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
    loader = make_loader(train_ds, tc.batch_size, True, tc.seed, rt.device, sampler=sampler,
                         num_workers=workers)
    # Validation: every rank scores its own share, no image twice (a DistributedSampler
    # would pad with repeats and bias the summed confusion matrix).
    val_part = Subset(val_ds, range(rt.rank, len(val_ds), rt.world_size))
    val_loader = make_loader(val_part, 1, False, tc.seed, rt.device, num_workers=workers)
    if len(loader) == 0:
        raise ValueError(f"no training batch: {len(train_ds)} training images for batch size "
                         f"{tc.batch_size}")
    return loader, val_loader, sampler


def reseed(run: Run, epoch: int) -> None:
    """Every random stream restarts from (seed, rank, epoch): a resumed run, on any number
    of ranks, draws exactly what the uninterrupted run would have drawn."""
    seed = run.config.train.seed
    stream = (seed * 1_000_003 + run.rt.rank * 7919 + epoch) % 2**62
    run.augmenter.generator.manual_seed(stream)
    torch.manual_seed(stream + 1)  # dropout
    run.train_ds.set_epoch(epoch)
    if isinstance(run.sampler, DistributedSampler):
        run.sampler.set_epoch(epoch)
    elif run.sampler is not None:
        run.sampler.generator.manual_seed(seed + epoch)
    else:
        run.loader.generator.manual_seed(seed + epoch)


def train_one_epoch(run: Run, epoch: int, show: bool) -> tuple[float, int, float]:
    """One pass over the training loader: (mean loss over the applied steps, crops seen,
    seconds)."""
    run.model.train()
    reseed(run, epoch)
    loss_sum = torch.zeros((), device=run.rt.device)
    applied, seen, start = 0, 0, time.perf_counter()
    steps = len(run.loader)
    of = "" if run.budget else f"/{run.config.train.epochs}"
    # disable=None: no bar when the output is not a terminal (logs stay readable).
    bar = tqdm(run.loader, desc=f"epoch {epoch}{of}",
               disable=None if show else True, leave=False, unit="batch", dynamic_ncols=True)
    for i, batch in enumerate(bar):
        if run.budget is not None and i > 0 and time_is_up(run):
            break  # the rest of the time belongs to the last validation and save
        step_start = time.perf_counter()
        loss = training_step(run, batch, epoch, i + 1)
        if run.budget is not None:
            run.budget.record_step(time.perf_counter() - step_start)
        if loss is not None:
            loss_sum += loss
            applied += 1
        seen += batch["image"].shape[0]
        if show and (i % 5 == 4 or i == steps - 1):  # a host sync only every few steps
            bar.set_postfix(loss=f"{loss_sum.item() / max(applied, 1):.4f}",
                            lr=f"{run.optimizer.param_groups[0]['lr']:.2e}",
                            img_s=f"{seen / (time.perf_counter() - start):.1f}")
    return reduce_mean(loss_sum, applied, run.rt), seen, time.perf_counter() - start


def training_step(run: Run, batch: dict, epoch: int, step: int) -> torch.Tensor | None:
    """Forward, loss, backward and (unless the guard skips it) the update for one batch;
    the detached loss, or None for a skipped step."""
    rt = run.rt
    batch = run.augmenter(move_batch(batch, rt.device))
    # The forward pass updates BatchNorm statistics; a skipped step must not keep them.
    saved_stats = [buffer.clone() for buffer in run.model.buffers()]
    image = batch["image"]
    if rt.channels_last:
        image = image.contiguous(memory_format=torch.channels_last)
    deep = isinstance(run.criterion, DeepSupervisionLoss)  # it downsamples and crops
    with rt.autocast():
        logits = run.step_model(image, auxiliary=True) if deep else run.step_model(image)
    if deep:
        loss = run.criterion(logits, batch["mask"], batch["weight"])
    else:  # valid padding: the output is the centre of the input, so is the target
        target = center_crop(batch["mask"], *logits.shape[2:])
        weight = center_crop(batch["weight"], *logits.shape[2:])
        loss = run.criterion(logits.float(), target, weight)
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    run.scaler.unscale_(run.optimizer)
    clip = run.config.optim.grad_clip or math.inf  # inf: measure the norm, clip nothing
    grad_norm = nn.utils.clip_grad_norm_(run.model.parameters(), clip)
    run.criterion.check_targets = False  # checked once; avoids a host sync per step
    # One host sync per step: the guard must see the loss before the update is applied.
    loss_value, norm_value = _global_values(loss.detach(), grad_norm, rt)
    if not run.guard.allow_step(loss_value, norm_value, epoch, step):
        run.scaler.update()  # under fp16, lowers the loss scale after an overflow
        with torch.no_grad():
            for buffer, saved in zip(run.model.buffers(), saved_stats):
                buffer.copy_(saved)
        return None
    run.scaler.step(run.optimizer)
    run.scaler.update()
    if run.per_step:
        run.scheduler.step()
    return loss.detach()


def check_weights(run: Run, epoch: int) -> None:
    """Raise DivergenceError on every rank when any rank's parameters or BatchNorm
    statistics are not finite (ranks' statistics differ without sync_batchnorm)."""
    bad = nonfinite_tensors(unwrap(run.model))
    if run.rt.distributed:
        flag = torch.tensor([float(bool(bad))], device=run.rt.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item() and not bad:
            bad = ["a tensor on another rank"]
    if bad:
        raise run.guard.weights_error(epoch, bad)


def _global_values(loss: torch.Tensor, grad_norm: torch.Tensor, rt: Runtime):
    """(loss averaged over ranks, gradient norm) as floats: every rank decides the same."""
    pair = torch.stack([loss.float(), grad_norm.float().to(loss.device)])
    if rt.distributed:
        dist.all_reduce(pair)
        pair[0] /= rt.world_size
        pair[1] /= rt.world_size  # the same on every rank after DDP's gradient all-reduce
    loss_value, norm_value = pair.tolist()
    return loss_value, norm_value


def epoch_row(run: Run, epoch: int, train_loss: float, val_loss: float, scores: dict,
              seen: int, seconds: float) -> dict[str, float]:
    """The epoch's line of metrics.csv."""
    names = class_names_of(run.config.data)
    return {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
            "val_dice": scores["mean_dice"], "val_iou": scores["mean_iou"],
            "val_precision": scores["mean_precision"], "val_recall": scores["mean_recall"],
            "val_pixel_accuracy": scores["pixel_accuracy"],
            **{f"val_dice_{name}": d for name, d in zip(names, scores["dice"])},
            "lr": run.optimizer.param_groups[0]["lr"], "seconds": seconds,
            # wall seconds since the run started (with a budget: the budget's clock)
            "elapsed_s": run.budget.elapsed() if run.budget else time.monotonic() - run.started,
            "images_per_s": seen * run.rt.world_size / max(seconds, 1e-9),
            "skipped_steps": run.guard.skipped}


def update_best(run: Run, dice: float) -> bool:
    """Step a per-epoch schedule; True when this epoch is the best so far (until an epoch
    has a Dice, the latest one is, so a run always has a best checkpoint)."""
    if not run.per_step:
        run.scheduler.step(dice if not math.isnan(dice) else 0.0)
    first = math.isinf(run.best_dice)  # no epoch with a Dice yet: the latest is the best
    improved = first or (not math.isnan(dice) and dice > run.best_dice)
    if improved and not math.isnan(dice):
        run.best_dice = dice
    return improved


def save_epoch(run: Run, epoch: int, row: dict[str, float], metrics: dict, improved: bool,
               figures: bool) -> None:
    """metrics.csv, the last (and maybe best) checkpoint, and the figures (main process)."""
    run.log.append(row)
    resume_state = {"epoch": epoch, "best_dice": run.best_dice,
                    "optimizer": run.optimizer.state_dict(),
                    "scheduler": run.scheduler.state_dict(), "scaler": run.scaler.state_dict()}
    if run.budget is not None:  # a resumed run gets what is left of the budget
        resume_state["budget_used"] = run.budget.elapsed()
        resume_state["budget_end_cost"] = run.budget.end_cost
    # best before last: if writing best fails, last still holds the previous epoch, whose
    # best_dice does not claim a best checkpoint that was never written.
    if improved:  # also resumable: fine-tune from the best epoch with --resume
        save_checkpoint(run.best_dir, run.model, run.config, metrics, resume_state, run.plan)
    save_checkpoint(run.last_dir, run.model, run.config, metrics, resume_state, run.plan)
    if figures:
        plot_curves(run.log.rows, run.out / "curves.png")
        plot_predictions(run.previews, run.out / "predictions.png",
                         title=f"epoch {epoch}: validation Dice {row['val_dice']:.3f}")
