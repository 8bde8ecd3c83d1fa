"""Reading and writing volumes with their geometry, and pairing volume folders
(unetkit.data.volumes)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import tifffile
from PIL import Image

from unetkit.data.io import DataError
from unetkit.data.volumes import (
    VolumePair,
    is_volume_folder,
    read_volume,
    read_volume_header,
    read_volume_mask,
    volume_pairs,
    volume_stem,
    write_volume_labels,
    write_volume_probabilities,
)
from unetkit.errors import WriteError


@pytest.fixture
def nib():
    """nibabel (the optional 'medical' extra): the NIfTI tests ask for it, the rest run
    without it."""
    return pytest.importorskip("nibabel")


# A rotated, shifted grid with zooms (x, y, z) = (0.8, 0.8, 3.0) mm.
ANGLE = np.deg2rad(20)
AFFINE = np.array([
    [0.8 * np.cos(ANGLE), -0.8 * np.sin(ANGLE), 0.0, -91.5],
    [0.8 * np.sin(ANGLE), 0.8 * np.cos(ANGLE), 0.0, 12.25],
    [0.0, 0.0, 3.0, -40.0],
    [0.0, 0.0, 0.0, 1.0],
])


def xyz_volume(shape=(7, 6, 5), dtype=np.int16):
    """Values that say where they are: v[x, y, z] = 100 z + 10 y + x."""
    x, y, z = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    return (100 * z + 10 * y + x).astype(dtype)


def save_nifti(path, data, affine=AFFINE):
    import nibabel as nib

    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)  # as scanners write it: both forms, code 'scanner'
    img.set_sform(affine, code=1)
    nib.save(img, path)
    return path


# --------------------------------------------------------------------------- NIfTI


def test_nifti_round_trip_array_order_spacing_and_affine(nib, tmp_path):
    data = xyz_volume() - 1000  # negative values (CT-like) are kept, not scaled
    vol = read_volume(save_nifti(tmp_path / "ct.nii.gz", data))
    assert vol.array.dtype == np.float32 and vol.array.shape == (1, 5, 6, 7)  # (C, z, y, x)
    assert vol.array[0, 2, 3, 4] == 100 * 2 + 10 * 3 + 4 - 1000
    np.testing.assert_allclose(vol.spacing, (3.0, 0.8, 0.8), rtol=1e-6)  # (z, y, x)
    assert vol.affine.dtype == np.float64
    np.testing.assert_allclose(vol.affine, AFFINE, atol=1e-6)
    head = read_volume_header(tmp_path / "ct.nii.gz")  # header only: no data read
    assert head.array.shape == (1, 5, 6, 7) and head.array.dtype == np.int16
    assert head.array.base is not None and head.spacing == vol.spacing


def test_nifti_with_channels_gives_c_first(nib, tmp_path):
    data = np.stack([xyz_volume(), xyz_volume() + 1], axis=-1)  # (x, y, z, c)
    vol = read_volume(save_nifti(tmp_path / "mr.nii", data))
    assert vol.array.shape == (2, 5, 6, 7)
    assert vol.array[1, 2, 3, 4] == 235


def test_labels_written_like_the_input_keep_its_grid_exactly(nib, tmp_path):
    image = read_volume(save_nifti(tmp_path / "ct.nii.gz", xyz_volume()))
    image.header.set_slope_inter(2.0, -5.0)  # the source's intensity scaling ...
    image.header["cal_max"] = 400.0  # ... and display window must not reach the labels
    labels = (np.arange(5 * 6 * 7).reshape(5, 6, 7) % 3).astype(np.int64)
    write_volume_labels(tmp_path / "pred.nii.gz", labels, like=image)

    back = nib.load(tmp_path / "pred.nii.gz")
    assert np.array_equal(back.affine, image.affine)
    for form in ("qform", "sform"):  # viewers differ in which one they trust: both kept
        assert back.header[f"{form}_code"] == image.header[f"{form}_code"] == 1
        assert np.array_equal(getattr(back.header, f"get_{form}")(),
                              getattr(image.header, f"get_{form}")())
    assert back.header.get_zooms() == image.header.get_zooms()[:3]
    assert back.header.get_data_dtype() == np.uint8
    assert back.header.get_slope_inter() == (None, None) and back.header["cal_max"] == 0
    assert np.array_equal(np.asanyarray(back.dataobj).transpose(2, 1, 0), labels)
    mask = read_volume_mask(tmp_path / "pred.nii.gz", num_classes=3)
    assert mask.array.dtype == np.int64 and np.array_equal(mask.array, labels)
    assert not list(tmp_path.glob("*partial*"))


def test_labels_that_need_it_are_int16_and_probabilities_are_4d(nib, tmp_path):
    image = read_volume(save_nifti(tmp_path / "ct.nii.gz", xyz_volume()))
    labels = np.full((5, 6, 7), 300)
    write_volume_labels(tmp_path / "big.nii", labels, like=image)
    assert nib.load(tmp_path / "big.nii").header.get_data_dtype() == np.int16
    probs = np.random.default_rng(0).random((3, 5, 6, 7), dtype=np.float32)
    write_volume_probabilities(tmp_path / "probs.nii.gz", probs, like=image)
    back = read_volume(tmp_path / "probs.nii.gz")
    assert back.array.shape == (3, 5, 6, 7) and np.array_equal(back.array, probs)
    assert np.array_equal(back.affine, image.affine)


def test_writing_the_wrong_size_names_both(nib, tmp_path):
    image = read_volume(save_nifti(tmp_path / "ct.nii.gz", xyz_volume()))
    with pytest.raises(ValueError, match=r"\(4, 6, 7\).*ct.nii.gz"):
        write_volume_labels(tmp_path / "p.nii.gz", np.zeros((4, 6, 7), int), like=image)


def test_missing_nibabel_is_one_line_naming_the_extra(tmp_path, monkeypatch):
    path = tmp_path / "ct.nii.gz"
    path.write_bytes(b"never opened")
    monkeypatch.setitem(sys.modules, "nibabel", None)  # import nibabel now fails
    with pytest.raises(ImportError) as err:
        read_volume(path)
    assert str(err.value) == f"reading {path} needs nibabel: pip install -e '.[medical]'"


# --------------------------------------------------------------------------- TIFF, npy


def test_tiff_stack_spacing_round_trip(tmp_path):
    stack = xyz_volume(dtype=np.uint16).transpose(2, 1, 0)  # (z, y, x)
    tifffile.imwrite(tmp_path / "cells.tif", stack, imagej=True, resolution=(1 / 0.2, 1 / 0.25),
                     metadata={"spacing": 1.5, "unit": "mm", "axes": "ZYX"})
    vol = read_volume(tmp_path / "cells.tif")
    assert vol.array.shape == (1, 5, 6, 7) and vol.array[0, 2, 3, 4] == 234  # raw, not / 65535
    np.testing.assert_allclose(vol.spacing, (1.5, 0.25, 0.2), rtol=1e-6)
    np.testing.assert_allclose(np.diag(vol.affine), (0.2, 0.25, 1.5, 1.0), rtol=1e-6)

    write_volume_labels(tmp_path / "pred.tif", np.ones((5, 6, 7), int), like=vol)
    back = read_volume_mask(tmp_path / "pred.tif", num_classes=2)
    np.testing.assert_allclose(back.spacing, vol.spacing, rtol=1e-6)
    assert np.array_equal(back.array, np.ones((5, 6, 7)))


def test_tiff_stack_in_microns_and_with_channels(tmp_path):
    stack = np.zeros((5, 2, 6, 7), np.uint8)  # (z, c, y, x)
    stack[:, 1] = 9
    tifffile.imwrite(tmp_path / "a.tif", stack, imagej=True, resolution=(2.0, 2.0),
                     metadata={"spacing": 2.0, "unit": "micron", "axes": "ZCYX"})
    vol = read_volume(tmp_path / "a.tif")
    assert vol.array.shape == (2, 5, 6, 7) and vol.array[1].min() == 9
    np.testing.assert_allclose(vol.spacing, (0.002, 0.0005, 0.0005), rtol=1e-6)
    tifffile.imwrite(tmp_path / "plain.tif", stack[:, 0])  # no metadata: spacing 1.0
    assert read_volume(tmp_path / "plain.tif").spacing == (1.0, 1.0, 1.0)


def test_npy_volume_and_mask(tmp_path):
    np.save(tmp_path / "a.npy", np.ones((2, 5, 6, 7), np.float64))  # (C, D, H, W)
    vol = read_volume(tmp_path / "a.npy")
    assert vol.array.shape == (2, 5, 6, 7) and vol.array.dtype == np.float32
    assert vol.spacing == (1.0, 1.0, 1.0) and np.array_equal(vol.affine, np.eye(4))
    write_volume_labels(tmp_path / "m.npy", np.full((5, 6, 7), 2), like=vol)
    assert np.load(tmp_path / "m.npy").dtype == np.uint8
    assert read_volume_mask(tmp_path / "m.npy", num_classes=3).array.max() == 2


def test_a_2d_image_is_not_a_volume(tmp_path):
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((6, 7, 3), np.uint8), photometric="rgb")
    with pytest.raises(DataError, match=r"rgb.tif: volume has shape \(6, 7, 3\)"):
        read_volume(tmp_path / "rgb.tif")


def test_a_failed_write_is_one_line_and_leaves_no_file(tmp_path, monkeypatch):
    np.save(tmp_path / "a.npy", np.zeros((5, 6, 7)))
    like = read_volume_header(tmp_path / "a.npy")

    def full_disk(path, *args, **kwargs):
        open(path, "wb").write(b"half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "save", full_disk)
    with pytest.raises(WriteError) as err:
        write_volume_labels(tmp_path / "out" / "pred.npy", np.zeros((5, 6, 7), int), like=like)
    assert "\n" not in str(err.value)
    assert str(err.value).startswith(f"could not write labels to {tmp_path / 'out' / 'pred.npy'}"
                                     ": No space left on device")
    assert list((tmp_path / "out").iterdir()) == []


# --------------------------------------------------------------------------- mask errors


def test_bad_mask_values_are_one_line_naming_file_values_and_range(tmp_path):
    mask = np.zeros((5, 6, 7), np.uint8)
    mask[0, 0, :3] = (3, 7, 255)
    np.save(tmp_path / "m.npy", mask)
    with pytest.raises(DataError) as err:
        read_volume_mask(tmp_path / "m.npy", num_classes=3)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{tmp_path / 'm.npy'}: mask values {{0, 3, 7, 255}}")
    assert "expected class indices 0..2" in msg
    assert read_volume_mask(tmp_path / "m.npy", 8, ignore_index=255).array.max() == 255


def test_non_integer_mask_and_binary_0_255(tmp_path):
    np.save(tmp_path / "f.npy", np.full((5, 6, 7), 0.5, np.float32))
    with pytest.raises(DataError, match=r"f.npy: mask has non-integer values \{0.5\}"):
        read_volume_mask(tmp_path / "f.npy", num_classes=2)
    np.save(tmp_path / "b.npy", np.array([0, 255], np.uint8).repeat(105).reshape(5, 6, 7))
    assert set(np.unique(read_volume_mask(tmp_path / "b.npy", 2).array)) == {0, 1}


# --------------------------------------------------------------------------- pairing


def test_nnunet_layout_stacks_channels_in_order(nib, tmp_path):
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (tmp_path / sub).mkdir()
    for case in ("liver_001", "liver_002"):
        for channel in (1, 0):
            save_nifti(tmp_path / "imagesTr" / f"{case}_{channel:04d}.nii.gz",
                       xyz_volume() + 1000 * channel)
        save_nifti(tmp_path / "labelsTr" / f"{case}.nii.gz", np.zeros((7, 6, 5), np.uint8))
    save_nifti(tmp_path / "imagesTs" / "liver_009_0000.nii.gz", xyz_volume())

    pairs = volume_pairs(tmp_path)
    assert [p.name for p in pairs] == ["liver_001", "liver_002"]
    assert [p.name for p in pairs[0].image_paths] == ["liver_001_0000.nii.gz",
                                                      "liver_001_0001.nii.gz"]
    image = pairs[0].load_image()
    assert image.array.shape == (2, 5, 6, 7) and image.array[1, 0, 0, 0] == 1000
    assert pairs[1].load_mask(num_classes=2).array.shape == (5, 6, 7)
    assert is_volume_folder(tmp_path)


def test_pairing_problems_are_reported_together(nib, tmp_path):
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr").mkdir()
    images, labels = tmp_path / "imagesTr", tmp_path / "labelsTr"
    for name in ("a_0000", "a_0001", "b_0000", "c_0000", "c_0001"):
        save_nifti(images / f"{name}.nii.gz", xyz_volume())
    save_nifti(labels / "a.nii.gz", np.zeros((7, 6, 4), np.uint8))  # one slice short
    save_nifti(labels / "b.nii.gz", np.zeros((7, 6, 5), np.uint8))  # b lacks channel 1; c a mask
    with pytest.raises(DataError) as err:
        volume_pairs(tmp_path)
    msg = str(err.value)
    assert msg.startswith("3 problem(s) in the data")
    assert f"{images / 'b_0001.nii.gz'}: channel file missing" in msg
    assert f"{images / 'c_0000.nii.gz'}: no mask (expected {labels / 'c'}.nii.gz)" in msg
    assert (f"{labels / 'a.nii.gz'}: mask is 4x6x7 but its image a_0000.nii.gz is 5x6x7"
            in msg)


def test_images_masks_layout_with_double_suffix(nib, tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    save_nifti(tmp_path / "images" / "a.nii.gz", xyz_volume())
    save_nifti(tmp_path / "masks" / "a.nii.gz", np.zeros((7, 6, 5), np.uint8))
    np.save(tmp_path / "images" / "b.npy", np.zeros((5, 6, 7)))
    assert volume_stem("a.nii.gz") == "a"
    with pytest.raises(DataError, match="b.npy: no mask"):
        volume_pairs(tmp_path)
    np.save(tmp_path / "masks" / "b.npy", np.zeros((5, 6, 7), np.uint8))
    pairs = volume_pairs(tmp_path)
    assert pairs == [VolumePair("a", [tmp_path / "images" / "a.nii.gz"],
                                tmp_path / "masks" / "a.nii.gz"),
                     VolumePair("b", [tmp_path / "images" / "b.npy"],
                                tmp_path / "masks" / "b.npy")]


def test_is_volume_folder_tells_2d_from_3d(tmp_path):
    def folder(name, write):
        (tmp_path / name / "images").mkdir(parents=True)
        write(tmp_path / name / "images")
        return tmp_path / name

    png = folder("png", lambda d: Image.fromarray(np.zeros((8, 8), np.uint8)).save(d / "a.png"))
    rgb = folder("rgb", lambda d: np.save(d / "a.npy", np.zeros((32, 32, 3))))
    chw = folder("chw", lambda d: tifffile.imwrite(d / "a.tif", np.zeros((2, 32, 32), np.uint8)))
    stack = folder("stack", lambda d: tifffile.imwrite(d / "a.tif", np.zeros((9, 32, 32))))
    npy4 = folder("npy4", lambda d: np.save(d / "a.npy", np.zeros((1, 3, 32, 32))))  # C, D=3
    zyx = folder("zyx", lambda d: tifffile.imwrite(d / "a.tif", np.zeros((3, 32, 32), np.uint8),
                                                   imagej=True, metadata={"axes": "ZYX"}))
    assert not any(map(is_volume_folder, (png, rgb, chw, tmp_path / "empty")))
    assert is_volume_folder(stack) and is_volume_folder(zyx)
    assert not is_volume_folder(npy4)  # a (1, 3, H, W) array is a 3-channel 2D image


def test_a_mask_on_another_grid_is_a_problem(nib, tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    save_nifti(tmp_path / "images" / "a.nii.gz", xyz_volume())
    shifted = AFFINE.copy()
    shifted[2, 3] += 3.0  # one slice further up
    save_nifti(tmp_path / "masks" / "a.nii.gz", np.zeros((7, 6, 5), np.uint8), shifted)
    with pytest.raises(DataError, match=r"masks/a.nii.gz: mask has another position or spacing"):
        volume_pairs(tmp_path)
