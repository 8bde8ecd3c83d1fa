"""The built-in 3D demo data: generated stacks of nuclei-like blobs, as a confocal or
light-sheet microscope records them: slices 3x further apart than the pixels (anisotropic
voxels), blur, uneven background and noise. Nothing is downloaded.

Each volume is (image (1, D, H, W) float32 in [0, 1], mask (D, H, W) uint8 0/1) with the
voxel spacing (z, y, x) in micrometres; the same seed gives the same volumes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

DEMO_SPACING = (3.0, 1.0, 1.0)  # z, y, x: slices 3x further apart than the pixels
DEMO_SHAPE = (24, 96, 96)  # D, H, W voxels: 72 x 96 x 96 units of space


def make_volume(rng: np.random.Generator, shape: tuple[int, int, int] = DEMO_SHAPE,
                spacing: tuple[float, float, float] = DEMO_SPACING
                ) -> tuple[np.ndarray, np.ndarray]:
    """One volume: ellipsoidal blobs 10-22 units across, placed in physical space (so they
    span fewer slices than pixels), then blur, background and noise."""
    depth, height, width = shape
    sz, sy, sx = spacing
    # voxel centres in physical units
    z, y, x = np.meshgrid(np.arange(depth) * sz, np.arange(height) * sy,
                          np.arange(width) * sx, indexing="ij")
    mask = np.zeros(shape, np.uint8)
    brightness = np.zeros(shape, np.float32)
    extent = np.array([depth * sz, height * sy, width * sx])
    for _ in range(int(rng.integers(20, 32))):
        centre = rng.uniform(0.05, 0.95, 3) * extent
        radii = rng.uniform(5, 11, 3)
        inside = (((z - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2
                  + ((x - centre[2]) / radii[2]) ** 2) <= 1
        mask[inside] = 1
        brightness[inside] = np.maximum(brightness[inside], rng.uniform(0.45, 0.9))
    # light spreads further along z (the optical axis), as a microscope's blur does
    image = ndimage.gaussian_filter(brightness, sigma=(0.6, 1.2, 1.2))
    ramp = rng.uniform(0.05, 0.15) + 0.08 * (y / extent[1])  # uneven illumination
    image = image + ramp.astype(np.float32)
    image = image + rng.normal(0.0, 0.06, shape).astype(np.float32)
    return np.clip(image, 0, 1)[None].astype(np.float32), mask


def make_demo_volumes(count: int, seed: int = 0, shape: tuple[int, int, int] = DEMO_SHAPE,
                      spacing: tuple[float, float, float] = DEMO_SPACING
                      ) -> list[tuple[np.ndarray, np.ndarray]]:
    """``count`` volumes from one seed: [(image (1, D, H, W), mask (D, H, W)), ...]."""
    rng = np.random.default_rng(seed)
    return [make_volume(rng, shape, spacing) for _ in range(count)]


def write_demo_volumes(directory: str | Path, count: int = 24, seed: int = 0) -> Path:
    """The 3D demo as NIfTI files, DIR/images/vol_NNN.nii.gz + DIR/masks/vol_NNN.nii.gz,
    with the voxel spacing in the header (affine diag(x, y, z spacing)): what a scanner's
    export looks like, for trying `unetkit train/predict/evaluate` on files."""
    from unetkit.data.volumes import _nibabel
    from unetkit.errors import writing

    root = Path(directory)
    nib = _nibabel(root / "images", "writing")
    affine = np.diag([*reversed(DEMO_SPACING), 1.0])  # NIfTI voxel axes are (x, y, z)
    for i, (image, mask) in enumerate(make_demo_volumes(count, seed)):
        for sub, array in (("images", image[0]), ("masks", mask)):
            path = root / sub / f"vol_{i:03d}.nii.gz"
            with writing("demo volume", path):
                path.parent.mkdir(parents=True, exist_ok=True)
                nib.save(nib.Nifti1Image(np.ascontiguousarray(array.transpose(2, 1, 0)),
                                         affine), str(path))
    return root
