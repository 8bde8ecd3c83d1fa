"""Tiled prediction: overlap-tile exactness, blending, TTA, outputs, and predict_files."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image
from torch import nn

from unetkit.checkpoint import CheckpointError, build_model, load_checkpoint, save_checkpoint
from unetkit.config import Config, DataConfig, ModelConfig
from unetkit.data.io import DataError, read_mask
from unetkit.data.synthetic import write_demo_data
from unetkit.inference import blend_weight_sum, predict, predict_files
from unetkit.models import UNet
from unetkit.models.blocks import reflect_indices


def softmax_np(logits: torch.Tensor) -> np.ndarray:
    return torch.softmax(logits, dim=0).numpy()


def conv_model(kernel: np.ndarray) -> nn.Conv2d:
    """1 -> 1 channel 3x3 convolution, zero padding, no bias: translation invariant."""
    conv = nn.Conv2d(1, 1, 3, padding=1, bias=False).double()
    with torch.no_grad():
        conv.weight.copy_(torch.as_tensor(kernel, dtype=torch.float64).reshape(1, 1, 3, 3))
    return conv


# --------------------------------------------------------------------------- mirroring


@pytest.mark.parametrize("size", [2, 3, 5, 7])
@pytest.mark.parametrize("start", [-40, -6, -1, 0, 3])
def test_reflect_index_matches_numpy_reflect_padding(size, start):
    length = 50
    before = max(0, -start)
    after = max(0, start + length - size)
    padded = np.pad(np.arange(size), (before, after), mode="reflect")
    expected = padded[start + before : start + before + length]
    assert np.array_equal(reflect_indices(start, length, size), expected)


# --------------------------------------------------------------------------- overlap-tile


def whole_mirrored(net: UNet, image: np.ndarray) -> np.ndarray:
    """The network applied once to the image mirrored by its margin (and to a valid size)."""
    _, height, width = image.shape
    m = net.margin()
    in_h, in_w = net.valid_input_size(height), net.valid_input_size(width)
    padded = np.pad(image, ((0, 0), (m, in_h - height - m), (m, in_w - width - m)),
                    mode="reflect")
    with torch.no_grad():
        logits = net(torch.from_numpy(padded)[None])[0, :, :height, :width]
    return softmax_np(logits)


@pytest.fixture(scope="module")
def valid_net():
    torch.manual_seed(0)
    return UNet(2, 3, features=4, depth=2, padding="valid").double().eval()


@pytest.mark.parametrize(
    "size, tile",
    # sizes that are multiples of nothing; tile 4 is the smallest this net allows, 300
    # more than the image (one tile); 5 x 7 is smaller than the margin of 20 pixels.
    [((101, 77), 9), ((101, 77), 20), ((101, 77), 37), ((101, 77), 300), ((31, 45), 4),
     ((5, 7), 4), ((5, 7), 300)],
)
def test_overlap_tile_equals_network_on_whole_mirrored_image(valid_net, size, tile):
    rng = np.random.default_rng(1)
    image = rng.random((2, *size))
    expected = whole_mirrored(valid_net, image)
    out = np.empty((3, *size), dtype=np.float64)  # float64 output: compare to 1e-10
    result = predict(valid_net, image, tile=tile, batch_size=3, out=out)
    assert result is out
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-10)


def test_overlap_tile_default_float32_output(valid_net):
    image = np.random.default_rng(2).random((2, 50, 61))
    probs = predict(valid_net, image, tile=16)
    assert probs.dtype == np.float32 and probs.shape == (3, 50, 61)
    np.testing.assert_allclose(probs, whole_mirrored(valid_net, image), atol=1e-6)


# --------------------------------------------------------------------------- blending


@pytest.mark.parametrize(
    "height, width, tile, overlap, blend, multiple",
    [
        (101, 77, 32, 0.5, "gaussian", 1),
        (101, 77, 32, 0.25, "gaussian", 16),
        (300, 45, 64, 0.5, "constant", 1),
        (513, 511, 128, 0.3, "gaussian", 32),
        (5, 7, 64, 0.5, "gaussian", 4),  # image smaller than a tile
    ],
)
def test_blending_weights_sum_to_one(height, width, tile, overlap, blend, multiple):
    total = blend_weight_sum(height, width, tile, overlap, blend, multiple=multiple)
    assert total.shape == (height, width)
    np.testing.assert_allclose(total, 1.0, rtol=0, atol=1e-12)


def test_pointwise_model_stitches_exactly():
    # A 1x1 convolution sees no neighbours, so tiles cannot differ from the whole image.
    torch.manual_seed(0)
    net = nn.Conv2d(2, 3, 1).double()
    image = torch.rand(2, 50, 37, dtype=torch.float64)
    with torch.no_grad():
        expected = softmax_np(net(image[None])[0])
    for blend in ("gaussian", "constant"):
        probs = predict(net, image, tile=16, blend=blend)
        assert isinstance(probs, torch.Tensor) and probs.shape == (3, 50, 37)
        np.testing.assert_allclose(probs.numpy(), expected, atol=1e-6)


def test_translation_invariant_model_stitches_to_whole_image_output():
    rng = np.random.default_rng(3)
    net = conv_model(rng.normal(size=(3, 3)))
    image = torch.from_numpy(rng.normal(size=(1, 70, 53)))
    with torch.no_grad():
        p = torch.sigmoid(net(image[None])[0, 0]).numpy()
    probs = predict(net, image, tile=16, overlap=0.5).numpy()
    # Binary output: [1 - p, p] so that argmax gives the class.
    np.testing.assert_allclose(probs[0] + probs[1], 1.0, atol=1e-6)
    # Inside the image a tile's edge pixels see zero padding instead of image, but the
    # Gaussian gives them weight exp(-0.5 * 3.75**2) ~ 9e-4 next to a tile centred on them,
    # so seams stay within ~1e-3. The image border is zero-padded in both, so it matches.
    np.testing.assert_allclose(probs[1], p, atol=2e-3)
    # With a flat average the seams show: the blending is what makes the stitch seamless.
    flat = predict(net, image, tile=16, overlap=0.5, blend="constant").numpy()
    assert np.abs(flat[1] - p).max() > 0.1


def test_image_smaller_than_tile_is_mirrored_then_cropped():
    torch.manual_seed(0)
    net = UNet(1, 2, features=4, depth=2, padding="same").double().eval()
    image = np.random.default_rng(4).random((1, 5, 7))
    # Tile 64 shrinks to the image rounded up to 2**depth = 4: 8 x 8, filled by mirroring.
    padded = np.pad(image, ((0, 0), (0, 3), (0, 1)), mode="reflect")
    with torch.no_grad():
        expected = softmax_np(net(torch.from_numpy(padded)[None])[0, :, :5, :7])
    np.testing.assert_allclose(predict(net, image, tile=64), expected, atol=1e-6)


def test_batch_size_and_memmap_input_or_output_do_not_change_the_result(tmp_path):
    torch.manual_seed(0)
    net = UNet(1, 3, features=4, depth=2, padding="same")
    image = np.random.default_rng(5).random((1, 45, 60)).astype(np.float32)
    one = predict(net, image, tile=16, batch_size=1)
    np.save(tmp_path / "image.npy", image)
    read_only = np.load(tmp_path / "image.npy", mmap_mode="r")  # read tile by tile
    np.testing.assert_allclose(predict(net, read_only, tile=16, batch_size=2), one, atol=1e-6)
    out = np.lib.format.open_memmap(tmp_path / "probs.npy", mode="w+", dtype=np.float32,
                                    shape=(3, 45, 60))
    many = predict(net, image, tile=16, batch_size=5, out=out)
    assert many is out
    out.flush()
    np.testing.assert_allclose(np.load(tmp_path / "probs.npy"), one, atol=1e-6)
    np.testing.assert_allclose(one.sum(axis=0), 1.0, atol=1e-5)


def test_predict_restores_train_mode_and_checks_channels():
    net = UNet(3, 1, features=4, depth=1, padding="same").train()
    predict(net, np.zeros((3, 8, 8), dtype=np.float32))
    assert net.training
    with pytest.raises(ValueError, match="2 channel.*expects 3"):
        predict(net, np.zeros((2, 8, 8), dtype=np.float32))


def test_size_changing_model_that_is_not_a_valid_unet_is_rejected():
    with pytest.raises(ValueError, match="differs from its input size"):
        predict(nn.Conv2d(1, 2, 3), np.zeros((1, 10, 10), dtype=np.float32))


# --------------------------------------------------------------------------- TTA


def test_tta_of_a_symmetric_model_changes_nothing():
    # A kernel symmetric under all flips and 90-degree rotations: the model commutes with
    # the dihedral group, so every TTA member predicts the same thing.
    net = conv_model(np.array([[0.5, -1.0, 0.5], [-1.0, 3.0, -1.0], [0.5, -1.0, 0.5]]))
    image = torch.from_numpy(np.random.default_rng(6).normal(size=(1, 30, 44)))
    for tile in (16, 64):  # square tiles (8 transforms) and one 32x44 tile (4 transforms)
        plain = predict(net, image, tile=tile)
        np.testing.assert_allclose(predict(net, image, tile=tile, tta=True), plain, atol=1e-6)


def manual_tta(net: nn.Module, image: torch.Tensor, transforms) -> np.ndarray:
    total = 0
    for turns, flip in transforms:
        x = image.flip(-1) if flip else image
        x = torch.rot90(x, turns, dims=(-2, -1))
        with torch.no_grad():
            probs = torch.softmax(net(x[None])[0], dim=0)
        probs = torch.rot90(probs, -turns, dims=(-2, -1))
        total = total + (probs.flip(-1) if flip else probs)
    return (total / len(transforms)).numpy()


@pytest.mark.parametrize("shape", [(32, 32), (24, 40)])
def test_tta_equals_manual_average_over_flips_and_rotations(shape):
    torch.manual_seed(0)
    net = UNet(1, 3, features=4, depth=2, padding="same").eval()
    image = torch.rand(1, *shape)
    if shape[0] == shape[1]:
        transforms = [(k, f) for k in range(4) for f in (False, True)]
    else:  # 90-degree turns would change a non-square tile's shape
        transforms = [(0, False), (2, False), (0, True), (2, True)]
    expected = manual_tta(net, image, transforms)
    # fp32 pinned: the reference is computed in fp32, and "auto" may mean bf16 here.
    got = predict(net, image, tile=64, tta=True, autocast=False).numpy()  # one tile
    np.testing.assert_allclose(got, expected, atol=1e-5)
    plain = predict(net, image, tile=64, autocast=False).numpy()
    assert np.abs(got - plain).max() > 1e-3  # TTA did act


# --------------------------------------------------------------------------- predict_files


def make_checkpoint(folder, in_channels=1, normalize="dataset"):
    config = Config(
        model=ModelConfig(in_channels=in_channels, out_channels=1, features=4, depth=2,
                          norm=None),
        data=DataConfig(num_classes=2, normalize=normalize, mean=(0.4,) * in_channels,
                        std=(0.2,) * in_channels),
    )
    torch.manual_seed(0)
    return save_checkpoint(folder, build_model(config.model), config)


@pytest.fixture()
def demo(tmp_path):
    data = write_demo_data(tmp_path / "data", count=3, size=24, seed=0)
    return data, make_checkpoint(tmp_path / "ckpt")


def test_predict_files_writes_masks_probabilities_and_overlays(demo, tmp_path):
    data, ckpt = demo
    result = predict_files(ckpt, [data / "images"], tmp_path / "out", tile=16,
                           save_probabilities="npy", save_overlay=True, progress=False)
    assert result["failed"] == []
    assert [p.name for p in result["written"]] == [f"nuclei_00{i}.png" for i in range(3)]
    model, config = load_checkpoint(ckpt)
    for i in range(3):
        stem = f"nuclei_00{i}"
        raw = np.asarray(Image.open(data / "images" / f"{stem}.png"), dtype=np.float32) / 255
        probs = predict(model, ((raw - 0.4) / 0.2)[None], tile=16)  # normalised by hand
        saved = np.load(tmp_path / "out" / f"{stem}_prob.npy")
        np.testing.assert_allclose(saved, probs, atol=1e-6)
        mask_png = np.asarray(Image.open(tmp_path / "out" / f"{stem}.png"))
        assert set(np.unique(mask_png)) <= {0, 255}  # binary masks are written 0/255
        np.testing.assert_array_equal(read_mask(tmp_path / "out" / f"{stem}.png", 2),
                                      probs.argmax(0))
        overlay = np.asarray(Image.open(tmp_path / "out" / f"{stem}_overlay.png"))
        assert overlay.shape == (24, 24, 3)
        background = probs.argmax(0) == 0
        grey = np.round(raw * 255)
        np.testing.assert_allclose(overlay[background][:, 0], grey[background], atol=1)


def test_predict_files_tiff_probabilities(demo, tmp_path):
    data, ckpt = demo
    predict_files(ckpt, [data / "images" / "nuclei_001.png"], tmp_path / "out",
                  save_probabilities="tiff", progress=False)
    probs = tifffile.imread(tmp_path / "out" / "nuclei_001_prob.tif")
    assert probs.shape == (2, 24, 24) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-5)


def test_predict_files_lists_bad_files_without_stopping(demo, tmp_path, caplog):
    data, ckpt = demo
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"this is not a png")
    rgb = tmp_path / "colour.png"
    Image.fromarray(np.zeros((24, 24, 3), dtype=np.uint8)).save(rgb)
    good = data / "images" / "nuclei_000.png"
    result = predict_files(ckpt, [broken, good, rgb, tmp_path / "missing.png"],
                           tmp_path / "out", progress=False)
    assert [p.name for p in result["written"]] == ["nuclei_000.png"]
    failed = dict(result["failed"])
    assert set(failed) == {broken, rgb, tmp_path / "missing.png"}
    assert str(broken) in failed[broken]
    assert str(rgb) in failed[rgb] and "3 channel" in failed[rgb] and "expected 1" in failed[rgb]
    assert "does not exist" in failed[tmp_path / "missing.png"]
    printed = "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)
    assert "3 of 4 image(s) failed" in printed and str(broken) in printed
    assert (tmp_path / "out" / "nuclei_000.png").is_file()


def test_predict_files_raises_when_every_file_fails(demo, tmp_path):
    _, ckpt = demo
    rgb = tmp_path / "colour.png"
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(rgb)
    with pytest.raises(DataError, match=r"all 1 image\(s\) failed.*colour.png.*3 channel"):
        predict_files(ckpt, [rgb], tmp_path / "out", progress=False)
    with pytest.raises(DataError, match="no image files"):
        predict_files(ckpt, [tmp_path / "out"], tmp_path / "out2", progress=False)


def test_predict_files_missing_or_incomplete_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="not found.*nowhere"):
        predict_files(tmp_path / "nowhere", [tmp_path], tmp_path / "out", progress=False)
    partial = tmp_path / "partial"
    partial.mkdir()
    Config().save(partial / "config.json")
    with pytest.raises(CheckpointError, match="incomplete.*model.safetensors"):
        predict_files(partial, [tmp_path], tmp_path / "out", progress=False)


def test_tta_and_bf16_autocast_on_a_valid_unet():
    # One of the tests that run in fp32 AND bf16 on every machine, whatever "auto" means.
    net = UNet(1, 2, features=4, depth=2, padding="valid").eval()
    image = np.random.default_rng(7).random((1, 30, 41)).astype(np.float32)
    plain = predict(net, image, tile=8, autocast=False)
    tta = predict(net, image, tile=8, tta=True, autocast=False)
    bf16 = predict(net, image, autocast=True)  # one tile: bf16 on a CPU may be slow
    assert tta.shape == bf16.shape == (2, 30, 41) and bf16.dtype == np.float32
    np.testing.assert_allclose(tta.sum(0), 1.0, atol=1e-5)
    assert 1e-4 < np.abs(bf16 - plain).max() < 0.05  # bf16 did run, and stays close


@pytest.mark.parametrize("bf16, atol", [(False, 1e-5), (True, 0.02)])
def test_channels_last_layout_gives_the_same_probabilities(bf16, atol):
    # Both precisions explicitly: the layouts may round differently in bf16 (8-bit
    # mantissa, relative error 2**-8 per operation), never by more than that allows.
    from unetkit.models import ResNetUNet

    torch.manual_seed(0)
    model = ResNetUNet(3, depth=18, decoder_channels=(16, 16, 8, 8, 4)).eval()
    image = torch.randn(3, 70, 90)
    plain = predict(model, image, tile=64, channels_last=False, autocast=bf16)
    fast = predict(model, image, tile=64, channels_last=True, autocast=bf16)
    assert torch.allclose(plain, fast, atol=atol)
    assert model.encoder.conv1.weight.is_contiguous()  # the caller's layout is restored


# --------------------------------------------------------------------------- streaming
# Prediction by bands of rows (unetkit.tiling.stream_bands, predict_bands), images read by
# rows (unetkit.data.regions) and outputs written by rows (unetkit.data.writers).


def blended_whole_image(net: nn.Module, image: np.ndarray, tile: int, overlap: float):
    """Reference for a same-size model: every tile accumulated into ONE whole-image
    accumulator with its normalised Gaussian weight (the plan and weights of
    unetkit.tiling; the banding is what is tested)."""
    from unetkit.tiling import plan_tiles

    plan = plan_tiles(net, image.shape[1], image.shape[2], tile, overlap, "gaussian", 0.125)
    total = None
    for r, c in plan.tiles:
        y0, x0 = plan.rows.starts[r], plan.cols.starts[c]
        ridx, cidx = plan.rows.input_indices(r), plan.cols.input_indices(c)
        x = torch.from_numpy(np.ascontiguousarray(image[:, ridx[:, None], cidx[None, :]]))
        with torch.no_grad():
            probs = torch.softmax(net(x[None])[0], dim=0).double()
        h, w = min(plan.rows.out_side, image.shape[1] - y0), min(plan.cols.out_side,
                                                                 image.shape[2] - x0)
        weight = torch.outer(plan.row_weights[r][:h], plan.col_weights[c][:w])
        total = torch.zeros((probs.shape[0], *image.shape[1:]), dtype=torch.float64) \
            if total is None else total
        total[:, y0 : y0 + h, x0 : x0 + w] += probs[:, :h, :w] * weight
    return total.numpy()


class RowsRecorder:
    """An image given by rows (like a file read by rows); records what was asked for."""

    def __init__(self, image: np.ndarray):
        self.image, self.shape, self.reads = image, image.shape, []

    def read_rows(self, y0: int, y1: int) -> np.ndarray:
        self.reads.append((y0, y1))
        return self.image[:, y0:y1].copy()


@pytest.mark.parametrize("padding, tile, batch_size", [
    ("valid", 4, 1), ("valid", 9, 3), ("valid", 20, 7), ("valid", 300, 2),
    ("same", 16, 1), ("same", 16, 5), ("same", 24, 3), ("same", 64, 4),
])
def test_streamed_bands_equal_the_whole_image_prediction(padding, tile, batch_size):
    from unetkit.inference import predict_bands

    torch.manual_seed(0)
    net = UNet(2, 3, features=4, depth=2, padding=padding).double().eval()
    image = np.random.default_rng(8).random((2, 101, 77))
    if padding == "valid":
        expected = whole_mirrored(net, image)
    else:
        expected = blended_whole_image(net, image, tile, overlap=0.25)
    source = RowsRecorder(image)
    bands = list(predict_bands(net, source, tile=tile, batch_size=batch_size,
                               autocast=False, dtype=torch.float64))
    assert [b[0] for b in bands] == [0] + [b[1] for b in bands[:-1]]  # in order, no gaps
    assert bands[-1][1] == 101 and all(b[2].shape[1:] == (b[1] - b[0], 77) for b in bands)
    streamed = np.concatenate([b[2].numpy() for b in bands], axis=1)
    np.testing.assert_allclose(streamed, expected, rtol=0, atol=1e-10)
    # The in-memory predict is built on the same bands: the same numbers.
    in_memory = predict(net, image, tile=tile, batch_size=batch_size, autocast=False,
                        out=np.empty((3, 101, 77)))
    np.testing.assert_array_equal(in_memory, streamed)
    # Memory: a band spans the tile rows of one batch, a read one tile's input rows.
    from unetkit.tiling import plan_tiles

    plan = plan_tiles(net, 101, 77, tile, 0.25, "gaussian", 0.125)
    tile_rows = -(-batch_size // len(plan.cols.starts)) + 1  # a batch touches at most these
    assert max(b[1] - b[0] for b in bands) <= tile_rows * plan.rows.out_side
    assert max(y1 - y0 for y0, y1 in source.reads) <= plan.rows.in_side
    assert len(source.reads) == len(plan.rows.starts)  # each tile row's rows read once


def test_streamed_bands_of_a_tall_image_stay_small_and_match_float32():
    torch.manual_seed(0)
    net = UNet(1, 2, features=4, depth=2, padding="same").eval()
    image = np.random.default_rng(9).random((1, 400, 24)).astype(np.float32)
    from unetkit.inference import predict_bands

    bands = list(predict_bands(net, image, tile=16, batch_size=2, autocast=False))
    assert len(bands) > 20 and max(b[1] - b[0] for b in bands) <= 16
    np.testing.assert_array_equal(np.concatenate([b[2].numpy() for b in bands], axis=1),
                                  predict(net, image, tile=16, autocast=False))


def _image_files(folder):
    """(path, kind the lazy reader should pick) for PNG, TIFF and .npy variants."""
    rng = np.random.default_rng(10)
    grey8 = rng.integers(0, 256, (45, 37), dtype=np.uint8)
    grey16 = rng.integers(0, 65536, (45, 37), dtype=np.uint16)
    rgb8 = rng.integers(0, 256, (45, 37, 3), dtype=np.uint8)
    rgba8 = rng.integers(0, 256, (45, 37, 4), dtype=np.uint8)
    files = []
    for name, pixels in [("g8.png", grey8), ("g16.png", grey16), ("rgb8.png", rgb8),
                         ("rgba8.png", rgba8)]:
        Image.fromarray(pixels).save(folder / name)
        files.append((folder / name, "whole"))
    tiffs = [("plain_g16.tif", grey16, {}, "memmap"),
             ("plain_rgb.tif", rgb8, {"photometric": "rgb"}, "memmap"),
             ("strips_g8.tif", grey8, {"compression": "zlib", "rowsperstrip": 8}, "tiles"),
             ("tiles_rgb.tif", rgb8, {"compression": "zlib", "tile": (16, 16),
                                      "photometric": "rgb"}, "tiles"),
             ("tiles_rgba.tif", rgba8, {"compression": "zlib", "tile": (16, 16),
                                        "photometric": "rgb", "extrasamples": ["unassalpha"]},
              "tiles"),
             ("planar.tif", np.moveaxis(rgb8, -1, 0).copy(),
              {"compression": "zlib", "photometric": "minisblack"}, "whole")]
    for name, pixels, options, how in tiffs:
        tifffile.imwrite(folder / name, pixels, **options)
        files.append((folder / name, how))
    np.save(folder / "float.npy", rng.random((3, 45, 37)).astype(np.float32))
    np.save(folder / "int16_hwc.npy", rng.integers(0, 999, (45, 37, 2), dtype=np.int16))
    return files + [(folder / "float.npy", "memmap"), (folder / "int16_hwc.npy", "memmap")]


def test_lazy_reader_equals_read_image_for_every_format(tmp_path):
    from unetkit.data.io import read_image
    from unetkit.data.regions import open_image

    with pytest.warns(UserWarning, match="alpha"):
        files = _image_files(tmp_path)
        expected = {path: read_image(path) for path, _ in files}
    for path, how in files:
        with open_image(path) as source:
            assert source.how == how, path.name
            assert source.shape == expected[path].shape, path.name
            if how != "whole":
                assert source.dtype != np.float32 or path.suffix == ".npy"
            rows = [source.read_rows(y, y + 7) for y in range(0, 45, 7)]
        assert all(r.dtype == np.float32 for r in rows)
        np.testing.assert_array_equal(np.concatenate(rows, axis=1), expected[path],
                                      err_msg=path.name)


def test_lazy_reader_keeps_the_stored_dtype_and_names_bad_files(tmp_path):
    from unetkit.data.regions import open_image

    Image.fromarray(np.zeros((20, 30), dtype=np.uint8)).save(tmp_path / "a.png")
    with open_image(tmp_path / "a.png") as source:
        assert source.read_native(0, 20).dtype == np.uint8  # no whole-image float copy
    (tmp_path / "bad.tif").write_bytes(b"not a tiff")
    with pytest.raises(DataError, match="bad.tif"):
        open_image(tmp_path / "bad.tif")
    np.save(tmp_path / "nan.npy", np.full((1, 4, 4), np.nan, dtype=np.float32))
    with open_image(tmp_path / "nan.npy") as source, pytest.raises(DataError, match="NaN"):
        source.read_rows(0, 4)
    with pytest.raises(DataError, match="does not exist"):
        open_image(tmp_path / "missing.png")


def test_png_above_pillows_bomb_limit_is_read_with_a_note(tmp_path, monkeypatch, caplog):
    from unetkit.data.io import read_image
    from unetkit.data.regions import open_image

    pixels = np.arange(24 * 30, dtype=np.uint8).reshape(24, 30)
    Image.fromarray(pixels).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 720 px > 2 x 100: Pillow's error
    image = read_image(tmp_path / "big.png")
    np.testing.assert_allclose(image[0], pixels / 255.0, rtol=1e-6)
    with open_image(tmp_path / "big.png") as source:
        assert source.shape == (1, 24, 30)
    notes = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(notes) == 2 and all("big.png" in n and "decompression-bomb" in n for n in notes)
    assert Image.MAX_IMAGE_PIXELS == 100  # the limit is back for everything else
    with pytest.raises(Image.DecompressionBombError):
        Image.open(tmp_path / "big.png")


def old_predict_files(ckpt, path, out_dir, tile):
    """What predict_files wrote before streaming: the whole image at once."""
    from unetkit.data.io import read_image, write_image, write_mask
    from unetkit.inference import normalize_image
    from unetkit.report import overlay

    model, config = load_checkpoint(ckpt, fold_batchnorm=True)
    raw = read_image(path)
    probs = predict(model, normalize_image(raw, config, path), tile=tile, autocast=False)
    labels = probs.argmax(axis=0)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_mask(out_dir / f"{path.stem}.png", labels, max(config.model.out_channels, 2))
    painted = overlay(raw, labels, alpha=0.5, stretch=False)
    write_image(out_dir / f"{path.stem}_overlay.png", painted.transpose(2, 0, 1))
    return probs


@pytest.mark.parametrize("out_channels, padding", [(1, "same"), (3, "valid")])
def test_predict_files_streamed_equals_the_whole_image_result(tmp_path, out_channels,
                                                              padding):
    config = Config(model=ModelConfig(in_channels=1, out_channels=out_channels, features=4,
                                      depth=2, norm=None, padding=padding),
                    data=DataConfig(num_classes=max(out_channels, 2), mean=(0.4,), std=(0.2,)))
    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "ckpt", build_model(config.model), config)
    rng = np.random.default_rng(11)
    pixels = (rng.random((83, 61)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    tifffile.imwrite(tmp_path / "b.tif", pixels, compression="zlib", rowsperstrip=8)
    np.save(tmp_path / "c.npy", pixels)
    for fmt in ("tiff", "npy"):
        out = tmp_path / f"new_{fmt}"
        result = predict_files(ckpt, [tmp_path / n for n in ("a.png", "b.tif", "c.npy")], out,
                               tile=12, autocast=False, save_probabilities=fmt,
                               save_overlay=True, progress=False)
        assert result["failed"] == [] and len(result["written"]) == 3
        for stem in ("a", "b", "c"):
            path = next(tmp_path.glob(f"{stem}.*"))
            probs = old_predict_files(ckpt, path, tmp_path / "old", tile=12)
            for name in (f"{stem}.png", f"{stem}_overlay.png"):
                np.testing.assert_array_equal(np.asarray(Image.open(out / name)),
                                              np.asarray(Image.open(tmp_path / "old" / name)))
            saved = (tifffile.imread(out / f"{stem}_prob.tif") if fmt == "tiff"
                     else np.load(out / f"{stem}_prob.npy"))
            assert saved.shape == probs.shape == (max(out_channels, 2), 83, 61)
            np.testing.assert_array_equal(saved, probs)
        suffix = ".tif" if fmt == "tiff" else ".npy"
        assert sorted(p.name for p in out.iterdir()) == sorted(
            f"{s}{end}" for s in "abc" for end in (".png", "_overlay.png", f"_prob{suffix}"))


@pytest.mark.parametrize("fail_in", ["mask", "overlay", "tiff"])
def test_a_failed_write_raises_write_error_and_leaves_no_partial_file(demo, tmp_path,
                                                                      monkeypatch, fail_in):
    import errno

    from unetkit.data import writers
    from unetkit.errors import WriteError

    data, ckpt = demo
    calls = {"n": 0}

    def disk_full(*args, **kwargs):
        calls["n"] += 1
        raise OSError(errno.ENOSPC, "No space left on device")

    if fail_in == "tiff":
        monkeypatch.setattr(tifffile, "imwrite", disk_full)
    else:
        real_write = writers.PngRows.write

        def write(self, y0, rows):
            if (self.channels == 3) == (fail_in == "overlay") and y0 > 0:
                disk_full()  # after the first band: a half-written file exists
            real_write(self, y0, rows)

        monkeypatch.setattr(writers.PngRows, "write", write)
    out = tmp_path / "out"
    with pytest.raises(WriteError, match=r"could not write .* No space left on device "
                                         r"\(.* free there\)") as caught:
        predict_files(ckpt, [data / "images"], out, tile=8, save_overlay=True,
                      save_probabilities="tiff", progress=False)
    assert calls["n"] == 1 and "nuclei_000" in str(caught.value)
    assert "\n" not in str(caught.value)
    assert list(out.iterdir()) == []  # no mask, overlay, TIFF, spool or .partial file
