"""The data fingerprint: exact counts on tiny hand-made data, warnings, and `unetkit plan`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from unetkit.cli import main
from unetkit.config import DataConfig
from unetkit.data.synthetic import write_demo_data
from unetkit.fingerprint import fingerprint, format_fingerprint


def _write(root: Path, name: str, image: np.ndarray, mask: np.ndarray,
           instances: np.ndarray | None = None) -> None:
    for sub in ("images", "masks", "instances"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(root / "images" / f"{name}.png")
    Image.fromarray(mask).save(root / "masks" / f"{name}.png")
    if instances is not None:
        Image.fromarray(instances).save(root / "instances" / f"{name}.png")


def _squares(size: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """Three squares: 10x10 and 6x6 touching side by side, 8x8 apart. (labels, 0/255 mask)."""
    labels = np.zeros((size, size), np.uint8)
    labels[2:12, 2:12] = 1
    labels[2:8, 12:18] = 2  # shares the edge x=11|12 with square 1
    labels[25:33, 25:33] = 3
    return labels, np.where(labels > 0, 255, 0).astype(np.uint8)


@pytest.fixture
def squares_root(tmp_path: Path) -> Path:
    labels, mask = _squares()
    image = np.arange(40 * 40, dtype=np.uint16).reshape(40, 40).astype(np.uint8)
    _write(tmp_path, "a", image, mask, labels)
    return tmp_path


def test_counts_sizes_classes_and_objects(squares_root):
    fp = fingerprint(DataConfig(root=str(squares_root)))
    assert fp["images"] == 1 and fp["channels"] == [1] and fp["dtype"] == ["uint8"]
    assert fp["sizes"]["height"] == {"min": 40, "median": 40.0, "max": 40}
    fg = (100 + 36 + 64) / 1600
    assert fp["classes"]["pixel_fraction"] == pytest.approx([1 - fg, fg])
    assert fp["classes"]["mask_encoding"] == "binary"
    ob = fp["objects"]
    assert ob["source"] == "instance labels" and ob["count"] == 3
    assert ob["area_px"]["min"] == 36 and ob["area_px"]["max"] == 100
    assert ob["area_px"]["median"] == 64
    assert ob["diameter_px_median"] == pytest.approx(2 * np.sqrt(64 / np.pi))
    assert ob["touching"] == pytest.approx(2 / 3)
    json.dumps(fp)
    assert "touching" in format_fingerprint(fp)


def test_components_without_instance_labels(tmp_path):
    labels, mask = _squares()
    _write(tmp_path, "a", np.full((40, 40), 7, np.uint8), mask)
    ob = fingerprint(DataConfig(root=str(tmp_path)))["objects"]
    # The two touching squares are one component; nothing touches then.
    assert ob["source"].startswith("connected components")
    assert ob["count"] == 2 and sorted([ob["area_px"]["min"], ob["area_px"]["max"]]) == [64, 136]
    assert ob["touching"] == 0


def test_intensity_and_constant_channel(tmp_path):
    _, mask = _squares()
    _write(tmp_path, "a", np.full((40, 40), 51, np.uint8), mask)
    fp = fingerprint(DataConfig(root=str(tmp_path)))
    assert fp["intensity"]["mean"] == pytest.approx([0.2])
    assert fp["intensity"]["std"] == pytest.approx([0.0], abs=1e-7)
    assert any("constant" in w for w in fp["warnings"])


def test_warnings_present_when_conditions_hold(squares_root):
    warnings = fingerprint(DataConfig(root=str(squares_root)))["warnings"]
    assert any("smaller than the default patch" in w for w in warnings)
    assert any("only 1 images" in w for w in warnings)
    assert not any("tiny objects" in w for w in warnings)  # median diameter 9 px
    assert not any("imbalance" in w for w in warnings)  # 12.5% foreground


def test_tiny_objects_and_imbalance(tmp_path):
    labels = np.zeros((100, 100), np.uint8)
    labels[10:13, 10:13] = 1  # 9 px of 10000: 0.09%, diameter 3.4 px
    mask = np.where(labels > 0, 255, 0).astype(np.uint8)
    _write(tmp_path, "a", np.zeros((100, 100), np.uint8), mask, labels)
    warnings = fingerprint(DataConfig(root=str(tmp_path)))["warnings"]
    assert any("tiny objects" in w for w in warnings)
    assert any("extreme imbalance: class 1" in w for w in warnings)


def test_demo_folder_has_no_unexpected_warnings(tmp_path):
    root = write_demo_data(tmp_path / "demo", count=10, size=256, seed=0)
    fp = fingerprint(DataConfig(root=str(root)))
    assert fp["images"] == 10 and fp["channels"] == [1] and fp["dtype"] == ["uint8"]
    assert fp["objects"]["source"] == "instance labels" and fp["objects"]["count"] > 0
    assert fp["warnings"] == []


def test_cli_writes_json_and_prints_the_plan(squares_root, capsys):
    assert main(["plan", "--data", str(squares_root), "--time", "0"]) == 0
    fp = json.loads((squares_root / "fingerprint.json").read_text())
    assert fp["objects"]["count"] == 3
    printed = capsys.readouterr().out
    assert "objects" in printed and "plan:" not in printed
    # with a time, also the plan train would use: one 40 px image -> a 32 px patch
    assert main(["plan", "--data", str(squares_root), "--time", "90s"]) == 0
    printed = capsys.readouterr().out
    assert "plan: 1m 30s on cpu" in printed and "--patch-size           32" in printed


def test_cli_missing_folder_is_one_line(tmp_path, capsys):
    assert main(["plan", "--data", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("unetkit plan: error:") and "does not exist" in err
