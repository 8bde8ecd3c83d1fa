"""Rules measured on real data (benchmarks/realdata), tested on small data made here:
the intensity-range spread in the fingerprint, the normalisation rule, and per-image
normalisation at prediction that streams a file in bands."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch

from unetkit.checkpoint import save_checkpoint
from unetkit.config import Config, DataConfig, ModelConfig
from unetkit.data.normalize import normalize_image
from unetkit.data.regions import open_image
from unetkit.fingerprint import range_spread
from unetkit.inference import STATISTICS_ROWS, image_statistics, predict, predict_files
from unetkit.models.registry import build_model
from unetkit.plan import RANGE_SPREAD, normalize_rule


def test_range_spread_is_the_ratio_of_the_images_ranges():
    rng = np.random.default_rng(0)
    base = rng.random((2, 5000))
    # one image at a quarter of the other's contrast in channel 1, alike in channel 0
    dim = base.copy()
    dim[1] *= 0.25
    ranges = np.percentile(base, 99, axis=1) - np.percentile(base, 1, axis=1)
    assert range_spread([base, dim]) == pytest.approx(
        ranges[1] / (0.25 * ranges[1]), rel=1e-9)
    assert range_spread([base, base + 0.5]) == pytest.approx(1.0)


def test_normalisation_rule_z_scores_each_image_when_ranges_differ():
    mixed = {"intensity": {"range_spread": 40.0}}  # 8- and 16-bit files in one set
    alike = {"intensity": {"range_spread": 1.3}}
    assert normalize_rule(mixed)[0] == "per_image"
    assert "40.0x" in normalize_rule(mixed)[1]
    assert normalize_rule(alike)[0] == "dataset"
    assert normalize_rule({"intensity": {"range_spread": RANGE_SPREAD}})[0] == "dataset"


def test_image_statistics_read_by_rows_equal_the_whole_image(tmp_path):
    rng = np.random.default_rng(1)
    rows = STATISTICS_ROWS + 37  # more than one pass of rows
    pixels = (rng.random((rows, 19, 2)) * 60000).astype(np.uint16)
    tifffile.imwrite(tmp_path / "a.tif", pixels)
    with open_image(tmp_path / "a.tif") as source:
        mean, std = image_statistics(source)
        whole = source.read_rows(0, rows).astype(np.float64)
    np.testing.assert_allclose(mean, whole.mean(axis=(1, 2)), rtol=1e-6)
    np.testing.assert_allclose(std, whole.std(axis=(1, 2)), rtol=1e-6)


def test_per_image_model_predicts_files_with_the_whole_images_statistics(tmp_path):
    """Streamed in bands of 8 rows, a per-image model must see what the whole image
    z-scored gives; a band's own statistics would differ (the image is a ramp)."""
    config = Config(model=ModelConfig(in_channels=1, out_channels=1, features=4, depth=2,
                                      norm=None),
                    data=DataConfig(num_classes=2, normalize="per_image"))
    torch.manual_seed(0)
    model = build_model(config.model)
    ckpt = save_checkpoint(tmp_path / "ckpt", model, config)
    ramp = np.linspace(0, 60000, 70 * 33).reshape(70, 33).astype(np.uint16)
    tifffile.imwrite(tmp_path / "ramp.tif", ramp, rowsperstrip=8)
    out = tmp_path / "out"
    predict_files(ckpt, [tmp_path / "ramp.tif"], out, tile=16, autocast=False,
                  save_probabilities="tiff", progress=False)
    streamed = tifffile.imread(out / "ramp_prob.tif")
    with open_image(tmp_path / "ramp.tif") as source:
        image = source.read_rows(0, 70)
    model.eval()
    expected = predict(model, normalize_image(image, config), tile=16, autocast=False)
    np.testing.assert_allclose(streamed, expected, atol=1e-5)


def test_validation_split_spans_the_foreground_fractions():
    """20 images whose foreground grows from 0% to 95%: a random 20% draw can hold only
    near-empty ones; the stratified split takes one from each quarter of the ranking."""
    from unetkit.data.pairing import Item, foreground_fractions, split_for

    items = []
    for i in range(20):
        mask = np.zeros((10, 10), np.int64)
        mask.flat[: 5 * i] = 1  # 0 .. 95 foreground pixels
        items.append(Item(name=f"img{(i * 7) % 20:02d}", image=np.zeros((1, 10, 10)),
                          mask=mask))
    cfg = DataConfig(num_classes=2, val_fraction=0.2)
    fractions = dict(zip([it.name for it in items], foreground_fractions(items, cfg)))
    for seed in range(10):
        train, val = split_for(items, cfg, seed)
        assert len(val) == 4 and len(train) == 16
        ranks = sorted(int(fractions[it.name] * 20) for it in val)  # rank = 20 * fraction
        assert [r // 5 for r in ranks] == [0, 1, 2, 3]  # one in each quarter
        assert set(it.name for it in val).isdisjoint(it.name for it in train)
