"""Images with any number of channels: 8-band .npy and TIFF files read by the channel-axis
rule, trained and predicted end to end, a clear error when images disagree, and the
pretrained ResNet stem adapted to 8 channels."""

import dataclasses
import re

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from unetkit import predict_files, train
from unetkit.checkpoint import load_checkpoint
from unetkit.config import Config
from unetkit.data.folder import build_datasets
from unetkit.data.io import DataError, read_image, read_mask
from unetkit.data.pairing import find_items, preflight
from unetkit.data.regions import open_image
from unetkit.data.volumes import is_volume_folder
from unetkit.models import ResNet, ResNetUNet
from unetkit.models.pretrained import TORCHVISION_FILES, adapt_first_conv

BANDS = 8


def write_torchvision_file(folder, depth: int) -> dict:
    """A torchvision-layout weight file from a random ResNet (as in test_pretrained)."""
    torch.manual_seed(0)
    state = ResNet(depth).state_dict()
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, folder / TORCHVISION_FILES[depth])
    return state


def bands(seed: int, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """(8, size, size) uint16 bands, each with its own level, and the mask (disc bright in
    band 5)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    centre = rng.integers(8, size - 8, 2)
    mask = ((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 < 36).astype(np.uint8)
    image = rng.normal(1000, 100, (BANDS, size, size)) + 3000 * np.arange(BANDS)[:, None, None]
    image[5] += 10000.0 * mask
    return np.clip(image, 0, 65535).astype(np.uint16), mask


def write_multiband_folder(root, count=6, size=32):
    """Half the images .npy (C, H, W), half TIFF (H, W, C); masks PNG (0/255)."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(count):
        image, mask = bands(i, size)
        if i % 2:
            tifffile.imwrite(root / "images" / f"im{i}.tif", np.moveaxis(image, 0, -1),
                             photometric="minisblack", planarconfig="contig")
        else:
            np.save(root / "images" / f"im{i}.npy", image)
        Image.fromarray(mask * 255).save(root / "masks" / f"im{i}.png")
    return root


# --------------------------------------------------------------------------- reading


@pytest.mark.parametrize("layout", ["npy chw", "npy hwc", "tiff pages", "tiff planar",
                                    "tiff contig", "npy 1chw"])
def test_eight_bands_are_read_as_c_h_w_whichever_end_holds_them(tmp_path, layout):
    image, _ = bands(0, size=24)
    image = image[:, :, :20]  # H 24, W 20: the axes cannot be confused
    path = tmp_path / ("a.npy" if layout.startswith("npy") else "a.tif")
    if layout == "npy chw":
        np.save(path, image)
    elif layout == "npy hwc":
        np.save(path, np.moveaxis(image, 0, -1))
    elif layout == "npy 1chw":
        np.save(path, image[None])
    elif layout == "tiff pages":  # tifffile's default for a 3-D array: one page per band
        tifffile.imwrite(path, image)
    elif layout == "tiff planar":
        tifffile.imwrite(path, image, photometric="minisblack", planarconfig="separate")
    else:
        tifffile.imwrite(path, np.moveaxis(image, 0, -1), photometric="minisblack",
                         planarconfig="contig")
    expected = image.astype(np.float32) / 65535
    np.testing.assert_array_equal(read_image(path), expected)
    with open_image(path) as source:  # prediction reads by rows with the same rule
        assert source.shape == (BANDS, 24, 20)
        np.testing.assert_array_equal(source.read_rows(5, 17), expected[:, 5:17])


def test_the_smaller_end_is_the_channel_axis_and_equal_ends_are_an_error(tmp_path):
    np.save(tmp_path / "wide.npy", np.zeros((40, 30, 12), np.float32))
    assert read_image(tmp_path / "wide.npy").shape == (12, 40, 30)
    np.save(tmp_path / "tall.npy", np.zeros((12, 40, 30), np.float32))
    assert read_image(tmp_path / "tall.npy").shape == (12, 40, 30)
    np.save(tmp_path / "rgb.npy", np.zeros((3, 40, 2), np.float32))  # up to 4: last first
    assert read_image(tmp_path / "rgb.npy").shape == (2, 3, 40)
    np.save(tmp_path / "cube.npy", np.zeros((9, 40, 9), np.float32))
    with pytest.raises(DataError, match=r"cube\.npy.*both ends have 9 entries"):
        read_image(tmp_path / "cube.npy")
    np.save(tmp_path / "mask.npy", np.zeros((8, 40, 30), np.uint8))  # masks stay 1 channel
    with pytest.raises(DataError, match=r"mask\.npy: mask has 8 channels"):
        read_mask(tmp_path / "mask.npy", 2)


def test_a_multiband_folder_is_2d_and_a_stack_with_3d_masks_a_volume(tmp_path):
    root = write_multiband_folder(tmp_path / "bands", count=2)
    assert not is_volume_folder(root)
    stack = tmp_path / "stack"
    (stack / "images").mkdir(parents=True)
    (stack / "masks").mkdir()
    np.save(stack / "images" / "a.npy", np.zeros((8, 32, 32), np.float32))
    np.save(stack / "masks" / "a.npy", np.zeros((8, 32, 32), np.uint8))
    assert is_volume_folder(stack)  # the same image with a 3-D mask: 8 slices


def test_images_that_disagree_in_channels_name_both_files_and_counts(tmp_path):
    root = write_multiband_folder(tmp_path, count=3)
    np.save(root / "images" / "im0.npy", bands(0)[0][:3])  # 3 bands instead of 8
    cfg = Config().data
    cfg = dataclasses.replace(cfg, root=str(root))
    train_items, val_items = find_items(root, cfg, seed=0)
    with pytest.raises(DataError) as err:
        preflight(train_items + val_items, cfg)
    line = next(x for x in str(err.value).splitlines() if "im0.npy" in x)
    # names one of the two 8-band files (which one follows the split's order)
    assert "im0.npy: image has 3 channel(s) but " in line
    assert re.search(r"im[12]\.(tif|npy) has 8 \(as 2 of 3 images\)", line)
    with pytest.raises(DataError, match="im0.npy: image has 3 channel"):
        build_datasets(cfg, seed=0)


# --------------------------------------------------------------------------- end to end


def tiny_config(root, out, **model) -> Config:
    cfg = Config()
    cfg.data = dataclasses.replace(cfg.data, root=str(root), patch_size=32, val_fraction=0.34,
                                   weight_map=False)
    cfg.model = dataclasses.replace(cfg.model, **({"features": 4, "depth": 2} | model))
    cfg.optim = dataclasses.replace(cfg.optim, lr=3e-3, schedule="none")
    cfg.train = dataclasses.replace(cfg.train, epochs=1, batch_size=2, out=str(out),
                                    num_preview=1)
    return cfg


def test_eight_band_npy_and_tiff_train_and_predict(tmp_path):
    root = write_multiband_folder(tmp_path / "data")
    result = train(tiny_config(root, tmp_path / "run"), progress=False)
    model, config = load_checkpoint(tmp_path / "run")
    assert config.model.in_channels == BANDS and model.in_channels == BANDS
    assert config.data.normalize == "dataset" and len(config.data.mean) == BANDS
    # per-channel statistics: each band its own level (1000 + 3000 c, of 65535; band 5
    # also holds the bright discs)
    levels = np.asarray(config.data.mean) * 65535
    expected, others = 1000 + 3000 * np.arange(BANDS), np.arange(BANDS) != 5
    assert np.allclose(levels[others], expected[others], atol=100)
    assert levels[5] > expected[5] + 100 and len(set(config.data.std)) == BANDS
    assert (result.out / "predictions.png").is_file()
    done = predict_files(tmp_path / "run", [root / "images"], tmp_path / "pred",
                         progress=False, save_overlay=True)
    assert len(done["written"]) == 6 and not done["failed"]
    for path in done["written"]:
        assert np.asarray(Image.open(path)).shape == (32, 32)
    assert (tmp_path / "pred" / "im1_overlay.png").is_file()


def test_pretrained_stem_takes_eight_bands(tmp_path):
    state = write_torchvision_file(tmp_path / "weights", 18)
    path = tmp_path / "weights" / TORCHVISION_FILES[18]
    model = ResNetUNet(2, pretrained=path, depth=18, in_channels=BANDS)
    rgb = state["conv1.weight"]
    stem = model.encoder.conv1.weight
    assert stem.shape == (64, BANDS, 7, 7)
    assert torch.allclose(stem, adapt_first_conv(rgb, BANDS))
    # The rule of 1-4 channels: the same grey picture in all 8 bands answers as in RGB.
    grey = torch.randn(1, 1, 32, 32)
    eight = torch.nn.functional.conv2d(grey.repeat(1, BANDS, 1, 1), stem, stride=2, padding=3)
    three = torch.nn.functional.conv2d(grey.repeat(1, 3, 1, 1), rgb, stride=2, padding=3)
    assert torch.allclose(eight, three, atol=1e-4)


def test_a_pretrained_encoder_on_eight_bands_trains_with_their_own_statistics(tmp_path):
    write_torchvision_file(tmp_path / "weights", 18)
    root = write_multiband_folder(tmp_path / "data", count=4)
    cfg = tiny_config(root, tmp_path / "run", arch="resnet_unet", resnet_depth=18,
                      pretrained=str(tmp_path / "weights" / TORCHVISION_FILES[18]),
                      decoder_channels=(16, 8, 8, 4, 4))
    train(cfg, progress=False)
    model, config = load_checkpoint(tmp_path / "run")
    assert model.encoder.conv1.weight.shape == (64, BANDS, 7, 7)
    # not ImageNet's colours: "auto" gives the bands their own per-channel statistics
    assert config.data.normalize == "dataset" and len(set(config.data.mean)) == BANDS
