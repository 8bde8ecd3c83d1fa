"""Validation during training: whole images through the model, loss and scores.

A valid-padding U-Net gets each image mirrored by its margin (and up to its next valid
size) so that its output covers every pixel: :func:`forward_whole`.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from .checkpoint import unwrap
from .metrics import MetricTracker, logits_to_labels
from .models.blocks import mirror_pad
from .runtime import Runtime
from .volume_inference import sliding_window


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


def validate(model, loader, criterion, num_classes, ignore, rt: Runtime, num_preview: int,
             volume_tile: tuple[int, int, int] | None = None):
    """Whole validation images: (mean loss, scores, preview triples). Volumes go through
    the model tile by tile (``volume_tile``, the training patch), so a whole volume never
    has to fit in memory; their previews are the slice with the most foreground."""
    model.eval()
    tracker = MetricTracker(num_classes, ignore)
    loss_sum, count, previews = torch.zeros((), device=rt.device), 0, []
    with torch.inference_mode(), rt.autocast():
        for batch in loader:
            batch = move_batch(batch, rt.device)
            image = batch["image"]
            if rt.channels_last:
                image = image.contiguous(memory_format=torch.channels_last)
            if image.ndim == 5:
                logits = sliding_window(model, image, volume_tile or image.shape[2:])
            else:
                logits = forward_whole(model, image).float()
            loss_sum += criterion(logits, batch["mask"], batch["weight"])
            count += 1
            tracker.update(logits, batch["mask"])
            if len(previews) < num_preview:
                previews.append(_preview(batch["image"][0], batch["mask"][0],
                                         logits_to_labels(logits)[0]))
    tracker.all_reduce()
    return reduce_mean(loss_sum, count, rt), tracker.compute(), previews


def _preview(image: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> tuple:
    """(image (C, H, W), truth (H, W), prediction (H, W)) numpy; of a volume, the slice
    whose truth has the most foreground."""
    if mask.ndim == 3:
        z = int((mask > 0).sum(dim=(1, 2)).argmax())
        image, mask, labels = image[:, z], mask[z], labels[z]
    return image.float().cpu().numpy(), mask.cpu().numpy(), labels.cpu().numpy()


def move_batch(batch: dict, device: torch.device) -> dict:
    """The image, mask and weight map of a loader batch, on ``device``."""
    return {k: batch[k].to(device, non_blocking=True) for k in ("image", "mask", "weight")}


def reduce_mean(total: torch.Tensor, count: int, rt: Runtime) -> float:
    """``total / count`` summed over all ranks (plain division in one process); NaN when
    the count is 0 (an epoch whose every step was skipped has no mean loss)."""
    pair = torch.stack([total.detach().float(), torch.tensor(float(count), device=total.device)])
    if rt.distributed:
        dist.all_reduce(pair)
    total_value, count_value = pair.tolist()
    return total_value / count_value if count_value else float("nan")
