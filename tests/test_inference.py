"""Tiled prediction: overlap-tile exactness, blending, TTA, outputs, and predict_files."""

from __future__ import annotations

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


def test_predict_files_lists_bad_files_without_stopping(demo, tmp_path, capsys):
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
    printed = capsys.readouterr().err
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
