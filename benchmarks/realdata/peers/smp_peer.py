"""smp's Unet(resnet34) with its usual recipe: Adam 1e-3, batch 8, 128 x 128 random crops,
flips, Dice + cross-entropy, trained for a wall-clock budget, then whole test images.

    smp-venv/bin/python smp_peer.py SET OUT --seconds S --classes K

No ImageNet weights: the machine reaches no model hub, so the encoder starts from scratch
(smp's recipe would load them; said in the results)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from peer_io import Deadline, channels_first, load_part, report, save_mask, scale_per_image


def batches(items, rng, crop=128, batch=8):
    while True:
        xs, ys = [], []
        for i in rng.integers(len(items), size=batch):
            image, mask = items[i]
            h, w = mask.shape
            pad_h, pad_w = max(0, crop - h), max(0, crop - w)
            if pad_h or pad_w:
                image = np.pad(image, ((0, 0), (0, pad_h), (0, pad_w)), mode="reflect")
                mask = np.pad(mask, ((0, pad_h), (0, pad_w)), constant_values=0)
                h, w = mask.shape
            y, x = rng.integers(h - crop + 1), rng.integers(w - crop + 1)
            im, ma = image[:, y:y + crop, x:x + crop], mask[y:y + crop, x:x + crop]
            if rng.random() < 0.5:
                im, ma = im[:, :, ::-1], ma[:, ::-1]
            if rng.random() < 0.5:
                im, ma = im[:, ::-1], ma[::-1]
            xs.append(im.copy())
            ys.append(ma.copy())
        yield torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys)).long()


def predict(model, image: np.ndarray) -> np.ndarray:
    c, h, w = image.shape
    ph, pw = -h % 32, -w % 32
    x = torch.from_numpy(np.pad(image, ((0, 0), (0, ph), (0, pw)), mode="reflect"))[None]
    with torch.inference_mode():
        return model(x)[0, :, :h, :w].argmax(0).numpy()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("set", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--classes", type=int, required=True)
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(2)
    deadline = Deadline(args.seconds)
    train = [(scale_per_image(channels_first(im)), np.where(m == 255, 0, m))
             for _, im, m, _ in load_part(args.set, "train")]
    model = smp.Unet("resnet34", encoder_weights=None, in_channels=train[0][0].shape[0],
                     classes=args.classes)
    dice = smp.losses.DiceLoss("multiclass")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    steps, rng = 0, np.random.default_rng(0)
    model.train()
    for x, y in batches(train, rng):
        if deadline.left() <= 0:
            break
        logits = model(x)
        loss = dice(logits, y) + F.cross_entropy(logits, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        steps += 1
    train_s = args.seconds - deadline.left()
    model.eval()
    start = time.perf_counter()
    for name, image, _, _ in load_part(args.set, "test"):
        save_mask(args.out, name, predict(model, scale_per_image(channels_first(image))))
    report(args.out, train_s=train_s, predict_s=time.perf_counter() - start, steps=steps)


if __name__ == "__main__":
    main()
