"""Reading and writing images, masks and instance labels (unetkit.data.io)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import tifffile
from PIL import Image

from unetkit.data.io import (
    DataError,
    read_image,
    read_instances,
    read_mask,
    write_image,
    write_mask,
)

# --------------------------------------------------------------------------- images


def test_uint8_grayscale_png_is_scaled_by_255(tmp_path):
    pixels = np.array([[0, 51, 255], [102, 204, 17]], dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    image = read_image(tmp_path / "a.png")
    assert image.dtype == np.float32 and image.shape == (1, 2, 3)
    np.testing.assert_allclose(image[0], pixels / 255.0, rtol=1e-6)


def test_16bit_tiff_is_scaled_by_65535(tmp_path):
    pixels = np.array([[0, 65535], [32768, 1000]], dtype=np.uint16)
    tifffile.imwrite(tmp_path / "a.tif", pixels)
    image = read_image(tmp_path / "a.tif")
    assert image.shape == (1, 2, 2)
    np.testing.assert_allclose(image[0], [[0.0, 1.0], [32768 / 65535, 1000 / 65535]], rtol=1e-6)


def test_16bit_png_is_scaled_by_65535(tmp_path):
    pixels = np.array([[0, 40000, 65535]], dtype=np.uint16)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    np.testing.assert_allclose(read_image(tmp_path / "a.png")[0], pixels / 65535.0, rtol=1e-6)


@pytest.mark.parametrize("layout", ["hwc", "chw"])
def test_multichannel_tiff_either_layout_gives_chw(tmp_path, layout):
    rng = np.random.default_rng(0)
    chw = rng.integers(0, 65536, size=(3, 6, 7), dtype=np.uint16)
    if layout == "chw":  # e.g. one page per channel, as microscopes often write
        tifffile.imwrite(tmp_path / "a.tiff", chw, photometric="minisblack")
    else:
        tifffile.imwrite(tmp_path / "a.tiff", np.moveaxis(chw, 0, -1), photometric="rgb")
    np.testing.assert_allclose(read_image(tmp_path / "a.tiff"), chw / 65535.0, rtol=1e-6)


def test_rgba_png_drops_alpha_and_says_so(tmp_path):
    rgba = np.zeros((4, 5, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2], rgba[..., 3] = 255, 128, 0, 7
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    with pytest.warns(UserWarning, match="alpha"):
        image = read_image(tmp_path / "a.png")
    assert image.shape == (3, 4, 5)
    np.testing.assert_allclose(image[:, 0, 0], [1.0, 128 / 255, 0.0], rtol=1e-6)


def test_palette_png_image_is_read_as_rgb(tmp_path):
    img = Image.fromarray(np.array([[0, 1], [1, 0]], dtype=np.uint8), mode="P")
    img.putpalette([0, 0, 0, 255, 0, 51] + [0] * 762)
    img.save(tmp_path / "p.png")
    image = read_image(tmp_path / "p.png")
    assert image.shape == (3, 2, 2)
    np.testing.assert_allclose(image[:, 0, 1], [1.0, 0.0, 0.2], rtol=1e-6)
    np.testing.assert_allclose(image[:, 0, 0], [0.0, 0.0, 0.0])


def test_npy_float_is_kept_and_int32_is_scaled_by_its_max(tmp_path):
    floats = np.array([[0.25, 0.75]], dtype=np.float64)
    np.save(tmp_path / "f.npy", floats)
    np.testing.assert_allclose(read_image(tmp_path / "f.npy"), floats[None])
    ints = np.array([[0, 2**31 - 1]], dtype=np.int32)
    np.save(tmp_path / "i.npy", ints)
    np.testing.assert_allclose(read_image(tmp_path / "i.npy"), [[[0.0, 1.0]]])


def test_corrupt_and_missing_files_raise_data_error_naming_the_file(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    with pytest.raises(DataError, match="broken.png"):
        read_image(tmp_path / "broken.png")
    with pytest.raises(DataError, match="nothere.tif.*does not exist"):
        read_image(tmp_path / "nothere.tif")
    with pytest.raises(DataError, match="broken.png"):
        read_mask(tmp_path / "broken.png", num_classes=2)


def test_write_image_round_trip(tmp_path):
    image = np.array([[[0.0, 0.5, 1.0]], [[1.0, 0.2, 0.0]], [[0.3, 0.3, 0.3]]])
    write_image(tmp_path / "out" / "rgb.png", image)
    back = read_image(tmp_path / "out" / "rgb.png")
    np.testing.assert_allclose(back, np.round(image * 255) / 255, atol=1e-6)
    write_image(tmp_path / "gray.png", np.array([[2.0, -1.0]]))  # clipped into [0, 1]
    np.testing.assert_allclose(read_image(tmp_path / "gray.png"), [[[1.0, 0.0]]])


# --------------------------------------------------------------------------- masks


def _save_gray(path, values, dtype=np.uint8):
    Image.fromarray(np.asarray(values, dtype=dtype)).save(path)


@pytest.mark.parametrize("encoding", ["auto", "binary"])
def test_0_255_mask_decodes_to_0_1(tmp_path, encoding):
    _save_gray(tmp_path / "m.png", [[0, 255], [255, 0]])
    mask = read_mask(tmp_path / "m.png", num_classes=2, encoding=encoding)
    assert mask.dtype == np.int64
    np.testing.assert_array_equal(mask, [[0, 1], [1, 0]])


def test_index_mask_decodes_as_is(tmp_path):
    _save_gray(tmp_path / "m.png", [[0, 1, 2], [3, 2, 0]])
    for encoding in ("auto", "index"):
        np.testing.assert_array_equal(read_mask(tmp_path / "m.png", 4, encoding),
                                      [[0, 1, 2], [3, 2, 0]])


def test_ignore_index_is_kept(tmp_path):
    _save_gray(tmp_path / "m.png", [[0, 1, 255]])
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png", 2, ignore_index=255), [[0, 1, 255]])
    # With ignore_index 255, 255 always means "ignore", even in a 0/255-only mask.
    _save_gray(tmp_path / "z.png", [[0, 255]])
    np.testing.assert_array_equal(read_mask(tmp_path / "z.png", 2, ignore_index=255), [[0, 255]])


def test_rgb_palette_mask_decodes_to_classes(tmp_path):
    colours = {(0, 0, 0): 0, (255, 0, 0): 1, (0, 128, 255): 2}
    classes = np.array([[0, 1, 2], [2, 2, 1]])
    rgb = np.zeros((2, 3, 3), dtype=np.uint8)
    for colour, cls in colours.items():
        rgb[classes == cls] = colour
    Image.fromarray(rgb).save(tmp_path / "m.png")
    palette = {"0,0,0": 0, "255,0,0": 1, "0, 128, 255": 2}
    for encoding in ("auto", "palette"):
        mask = read_mask(tmp_path / "m.png", 3, encoding, palette=palette)
        np.testing.assert_array_equal(mask, classes)


def test_palette_mask_with_unknown_colour_lists_it(tmp_path):
    rgb = np.zeros((2, 2, 3), dtype=np.uint8)
    rgb[0, 0] = (255, 0, 0)
    rgb[1, 1] = (9, 8, 7)
    Image.fromarray(rgb).save(tmp_path / "m.png")
    with pytest.raises(DataError) as err:
        read_mask(tmp_path / "m.png", 2, "palette", palette={"0,0,0": 0, "255,0,0": 1})
    assert "m.png" in str(err.value) and "'9,8,7'" in str(err.value)
    assert "'255,0,0'" not in str(err.value).split("palette lists")[0]


def test_palette_mode_png_mask_gives_indices(tmp_path):
    img = Image.fromarray(np.array([[0, 1], [2, 1]], dtype=np.uint8), mode="P")
    img.putpalette([0, 0, 0, 200, 10, 10, 10, 200, 10] + [0] * 759)
    img.save(tmp_path / "m.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png", 3), [[0, 1], [2, 1]])
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png", 3, "palette"), [[0, 1], [2, 1]])


def test_palette_mode_png_with_a_given_palette_maps_its_colours(tmp_path):
    # Colour-table order (red first) differs from the class numbers (red = class 2).
    img = Image.fromarray(np.array([[0, 1], [2, 1]], dtype=np.uint8), mode="P")
    img.putpalette([255, 0, 0, 0, 0, 0, 0, 255, 0] + [0] * 759)
    img.save(tmp_path / "m.png")
    palette = {"0,0,0": 0, "0,255,0": 1, "255,0,0": 2}
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png", 3, palette=palette),
                                  [[2, 0], [1, 0]])


def test_rgb_mask_with_equal_channels_is_grayscale(tmp_path):
    gray = np.array([[0, 255], [0, 0]], dtype=np.uint8)
    Image.fromarray(np.stack([gray] * 3, axis=-1)).save(tmp_path / "m.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png", 2), [[0, 1], [0, 0]])


def test_colour_mask_without_palette_is_an_error(tmp_path):
    rgb = np.zeros((2, 2, 3), dtype=np.uint8)
    rgb[0, 0] = (255, 0, 0)
    Image.fromarray(rgb).save(tmp_path / "m.png")
    with pytest.raises(DataError, match=r"m\.png.*'255,0,0'.*palette"):
        read_mask(tmp_path / "m.png", 2)


def test_bad_mask_values_message_names_file_values_and_expectation(tmp_path):
    # An anti-aliased (resized) 0/255 mask: the classic "Dice stuck at 0" mistake.
    _save_gray(tmp_path / "blurry.png", [[0, 3, 128, 255]])
    with pytest.raises(DataError) as err:
        read_mask(tmp_path / "blurry.png", 2)
    msg = str(err.value)
    assert "blurry.png" in msg
    assert "{0, 3, 128, 255}" in msg
    assert "0..1" in msg and "0/255" in msg
    assert "anti-aliased" in msg

    # Too many classes: suggest the right num_classes.
    _save_gray(tmp_path / "many.png", [[0, 1, 5]])
    with pytest.raises(DataError, match=r"many\.png.*\{0, 1, 5\}.*0\.\.2.*num_classes to 6"):
        read_mask(tmp_path / "many.png", 3)


def test_long_value_lists_are_shortened(tmp_path):
    _save_gray(tmp_path / "m.png", [list(range(0, 200, 5))])
    with pytest.raises(DataError) as err:
        read_mask(tmp_path / "m.png", 2, "index")
    msg = str(err.value)
    assert "40 distinct values in all, max 195" in msg
    assert "50" not in msg.split("do not fit")[0]  # only the first 10 values are listed


def test_index_encoding_rejects_0_255_with_a_hint(tmp_path):
    _save_gray(tmp_path / "m.png", [[0, 255]])
    with pytest.raises(DataError, match="'auto' or 'binary'"):
        read_mask(tmp_path / "m.png", 2, "index")


def test_multiclass_mask_0_255_is_not_silently_binary(tmp_path):
    _save_gray(tmp_path / "m.png", [[0, 255]])
    with pytest.raises(DataError, match="ignore_index to 255"):
        read_mask(tmp_path / "m.png", 4)


def test_tiff_and_npy_masks(tmp_path):
    tifffile.imwrite(tmp_path / "m.tif", np.array([[0, 2], [1, 0]], dtype=np.uint16))
    np.testing.assert_array_equal(read_mask(tmp_path / "m.tif", 3), [[0, 2], [1, 0]])
    np.save(tmp_path / "m.npy", np.array([[0.0, 1.0]]))
    np.testing.assert_array_equal(read_mask(tmp_path / "m.npy", 2), [[0, 1]])
    np.save(tmp_path / "f.npy", np.array([[0.0, 0.5]]))
    with pytest.raises(DataError, match=r"f\.npy.*non-integer.*0\.5"):
        read_mask(tmp_path / "f.npy", 2)


@pytest.mark.parametrize("num_classes", [2, 4])
def test_write_mask_round_trip(tmp_path, num_classes):
    rng = np.random.default_rng(1)
    mask = rng.integers(0, num_classes, size=(5, 7))
    write_mask(tmp_path / "m.png", mask, num_classes)
    stored = np.array(Image.open(tmp_path / "m.png"))
    expected_values = {0, 255} if num_classes == 2 else set(range(num_classes))
    assert set(np.unique(stored).tolist()) <= expected_values  # binary is visible as 0/255
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png", num_classes), mask)


def test_write_mask_rejects_values_outside_binary(tmp_path):
    with pytest.raises(ValueError, match="0/1"):
        write_mask(tmp_path / "m.png", np.array([[0, 2]]), 2)


# --------------------------------------------------------------------------- instances


def test_read_instances_label_image(tmp_path):
    labels = np.array([[0, 1, 1], [300, 300, 0]], dtype=np.uint16)
    Image.fromarray(labels).save(tmp_path / "i.png")
    out = read_instances(tmp_path / "i.png")
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, labels)


def test_read_instances_colour_coded(tmp_path):
    rgb = np.zeros((2, 3, 3), dtype=np.uint8)
    rgb[0, 0] = rgb[0, 1] = (10, 200, 30)
    rgb[1, 2] = (250, 0, 0)
    Image.fromarray(rgb).save(tmp_path / "i.png")
    out = read_instances(tmp_path / "i.png")
    assert out[0, 0] == out[0, 1] > 0
    assert out[1, 2] > 0 and out[1, 2] != out[0, 0]
    assert out[1, 0] == 0 and len(np.unique(out)) == 3


def test_no_alpha_warning_for_plain_images(tmp_path):
    _save_gray(tmp_path / "a.png", [[1, 2]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_image(tmp_path / "a.png")
