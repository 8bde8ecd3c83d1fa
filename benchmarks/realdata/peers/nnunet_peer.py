"""nnU-Net v2 on CPU: its own dataset format, planning and preprocessing, then its trainer
shortened to the wall-clock budget (nnunet_trainer.py), then its own prediction (with its
default mirroring test-time augmentation).

    nnunet-venv/bin/python nnunet_peer.py SET OUT --seconds S --classes K

Trains fold "all" (every training image; nnU-Net's 5-fold split needs >= 5 cases and the
atlas has one), the 2d configuration for images and 3d_fullres for volumes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from peer_io import read, report

BIN = Path(sys.executable).parent


def write_dataset(set_dir: Path, raw: Path, classes: int) -> tuple[str, str, Path]:
    """nnU-Net's raw layout; returns (file ending, configuration, test input folder)."""
    from PIL import Image

    volumes = any(p.name.endswith(".nii.gz") for p in (set_dir / "train" / "images").iterdir())
    ending = ".nii.gz" if volumes else ".png"
    root = raw / "Dataset001_Peer"
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    channels = 1
    for part, sub in (("train", "imagesTr"), ("test", "imagesTs")):
        for image in sorted((set_dir / part / "images").iterdir()):
            name = image.name.removesuffix(".nii.gz").removesuffix(image.suffix)
            if volumes:
                shutil.copy(image, root / sub / f"{name}_0000.nii.gz")
                if part == "train":
                    shutil.copy(set_dir / part / "masks" / image.name,
                                root / "labelsTr" / image.name)
                continue
            pixels = read(image)
            channels = 1 if pixels.ndim == 2 else pixels.shape[-1]
            # PNG keeps 8- and 16-bit grey and 8-bit RGB as they are
            Image.fromarray(pixels).save(root / sub / f"{name}_0000.png")
            if part == "train":
                mask = read(set_dir / part / "masks" / f"{name}.png")
                Image.fromarray(np.where(mask == 255, 0, mask).astype(np.uint8)).save(
                    root / "labelsTr" / f"{name}.png")
    names = {"0": "MRI"} if volumes else (
        {"0": "R", "1": "G", "2": "B"} if channels == 3 else {"0": "microscopy"})
    labels = {"background": 0, **{f"class{k}": k for k in range(1, classes)}}
    count = len(list((root / "labelsTr").iterdir()))
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": names, "labels": labels, "numTraining": count, "file_ending": ending}))
    return ending, "3d_fullres" if volumes else "2d", root / "imagesTs"


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("set", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--classes", type=int, required=True)
    args = parser.parse_args()
    work = args.out / "nnunet"
    shutil.rmtree(work, ignore_errors=True)
    env = {**os.environ, "nnUNet_raw": str(work / "raw"),
           "nnUNet_preprocessed": str(work / "preprocessed"),
           "nnUNet_results": str(work / "results"), "nnUNet_compile": "f",
           "nnUNet_n_proc_DA": "2", "UNETKIT_NNUNET_SECONDS": str(args.seconds)}
    import nnunetv2
    trainers = Path(nnunetv2.__file__).parent / "training" / "nnUNetTrainer"
    shutil.copy(Path(__file__).parent / "nnunet_trainer.py", trainers / "nnUNetTrainer_Timed.py")
    _, config, test_in = write_dataset(args.set, work / "raw", args.classes)

    def call(*cmd: str) -> float:
        start = time.perf_counter()
        subprocess.run([str(BIN / cmd[0]), *cmd[1:]], env=env, check=True)
        return time.perf_counter() - start

    prep_s = call("nnUNetv2_plan_and_preprocess", "-d", "1", "-c", config, "-np", "2",
                  "--verify_dataset_integrity")
    train_s = call("nnUNetv2_train", "1", config, "all", "-tr", "nnUNetTrainer_Timed",
                   "-device", "cpu")
    predict_s = call("nnUNetv2_predict", "-i", str(test_in), "-o", str(args.out), "-d", "1",
                     "-c", config, "-f", "all", "-tr", "nnUNetTrainer_Timed",
                     "-chk", "checkpoint_final.pth", "-device", "cpu", "-npp", "1", "-nps", "1")
    report(args.out, train_s=train_s, predict_s=predict_s, prep_s=prep_s)


if __name__ == "__main__":
    main()
