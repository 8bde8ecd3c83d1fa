"""DataLoaders for training and validation, with a worker count chosen for the machine."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from unetkit.process import available_cores


def default_num_workers(cores: int | None = None) -> int:
    """min(4, cores - 1) loader workers, and none on <= 2 cores: there the training step
    already keeps both cores busy, and worker processes would only compete with it."""
    cores = available_cores() if cores is None else cores
    return 0 if cores <= 2 else min(4, cores - 1)


def _worker_init(worker_id: int) -> None:
    # Workers only read files and crop with numpy; one torch thread each avoids
    # oversubscribing the cores the training step uses.
    torch.set_num_threads(1)


def make_loader(dataset: Dataset, batch_size: int, train: bool, seed: int,
                device: torch.device | str, sampler: Any = None,
                num_workers: int | None = None) -> DataLoader:
    """A DataLoader for training (shuffled batches of crops) or validation (batch size 1:
    whole images differ in size).

    Workers: ``num_workers``, else the dataset's cfg.num_workers when set (a ``Subset``
    has no cfg: pass the number), else :func:`default_num_workers`. Shuffling uses a
    generator seeded with ``seed``; memory is pinned only for CUDA; the last incomplete
    training batch is dropped when there is at least one full batch (BatchNorm dislikes
    tiny batches).
    """
    configured = num_workers
    if configured is None:
        configured = getattr(getattr(dataset, "cfg", None), "num_workers", None)
    workers = default_num_workers() if configured is None else int(configured)
    generator = torch.Generator()
    generator.manual_seed(seed)
    if not train:
        batch_size = 1
    try:
        samples = len(sampler) if sampler is not None else len(dataset)
    except TypeError:  # a sampler without a length
        samples = batch_size
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train and sampler is None,
        sampler=sampler,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=torch.device(device).type == "cuda",
        drop_last=train and samples >= batch_size,
        generator=generator,
        worker_init_fn=_worker_init if workers > 0 else None,
    )
