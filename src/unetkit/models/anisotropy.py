"""Per-stage pooling and kernel sizes for anisotropic voxels: nnU-Net's rule.

A volume whose slices are 3 um apart but whose pixels are 1 um wide should not be pooled
along z as often as in-plane: after two 2x2x2 poolings a z step would be 12 um against
4 um in-plane. The rule, from nnU-Net's experiment planner (Isensee et al., "nnU-Net: a
self-configuring method for deep learning-based biomedical image segmentation", Nature
Methods 18, 203-211, 2021; ``get_pool_and_conv_props`` in nnunetv2's
``experiment_planning/experiment_planners/network_topology.py``), stage by stage:

* an axis is pooled (stride 2) only while its current spacing is less than
  :data:`ANISOTROPY_RATIO` (2) times the current finest spacing; the others keep their
  size (stride 1), so a coarse axis waits until pooling the fine ones has caught it up;
* the stage's convolutions have kernel size 3 along the axes within that ratio and 1
  along the others (nnU-Net: kernel 1 while an axis is at least 2x coarser than the
  finest), so a 3x3x3 kernel never mixes slices much further apart than pixels;
* the bottleneck always convolves 3 along every axis (nnU-Net's choice too).

The planner's other constraints (patch size, minimum map size, at most this many poolings
per axis) are left out: here ``depth`` fixes the number of poolings and every stage pools
at least the finest axis. Pure Python, no torch.
"""

from __future__ import annotations

from collections.abc import Sequence

#: an axis is pooled, and convolved with kernel 3, while its spacing is below this many
#: times the finest spacing (nnU-Net: ``current_spacing[i] / min_spacing < 2``)
ANISOTROPY_RATIO = 2.0
# Spacings such as (0.6, 0.3) are meant as exactly 2x; float division may say 1.9999...
_TOLERANCE = 1e-6

Stages = tuple[tuple[tuple[int, ...], ...], tuple[tuple[int, ...], ...]]


def anisotropic_stages(spacing: Sequence[float] | None, depth: int, dims: int = 3) -> Stages:
    """Pooling and convolution kernel sizes, per stage and per axis, for voxel ``spacing``.

    Args:
        spacing: the voxel size along each of ``dims`` axes, outermost first ((z, y, x) for a
            volume), in any one unit; None or () for isotropic voxels.
        depth: number of poolings.
        dims: spatial dimensions (3 for volumes; 2 works the same way for (y, x)).

    Returns ``(pool_sizes, kernel_sizes)``: ``depth`` pooling sizes (stage 0 first; also
    the strides of the matching upsamplings) and ``depth + 1`` kernel sizes (the
    convolutions of stages 0 .. depth-1, encoder and decoder alike, then the bottleneck).

    Example: spacing (3, 1, 1), depth 3: stage 0 pools (1, 2, 2) with kernels (1, 3, 3)
    (3 >= 2 * 1); the spacing becomes (3, 2, 2), within 2x, so stages 1 and 2 pool
    (2, 2, 2) with kernels (3, 3, 3); the bottleneck convolves (3, 3, 3). Isotropic or no
    spacing: (2, ...) and (3, ...) everywhere, the plain U-Net.
    """
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    current = [1.0] * dims if not spacing else [float(s) for s in spacing]
    if len(current) != dims:
        raise ValueError(f"spacing needs {dims} values (one per axis, outermost first), "
                         f"got {tuple(spacing)}")
    if not all(s > 0 for s in current):
        raise ValueError(f"spacing must be positive, got {tuple(spacing)}")
    pools, kernels = [], []
    for _ in range(depth):
        finest = min(current)
        within = [s / finest < ANISOTROPY_RATIO - _TOLERANCE for s in current]
        pools.append(tuple(2 if w else 1 for w in within))
        kernels.append(tuple(3 if w else 1 for w in within))
        current = [s * p for s, p in zip(current, pools[-1])]
    kernels.append((3,) * dims)
    return tuple(pools), tuple(kernels)


def is_isotropic(pools: Sequence[Sequence[int]], kernels: Sequence[Sequence[int]]) -> bool:
    """Whether every stage pools 2 and convolves 3 along every axis (the plain U-Net)."""
    return all(p == 2 for pool in pools for p in pool) and all(k == 3 for kn in kernels
                                                               for k in kn)
