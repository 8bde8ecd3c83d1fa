"""The encoder seam: what a U-Net encoder provides, and the encoders known by name.

A new encoder is one file (a module with the members of :class:`Encoder`) plus one line,
``register_encoder("name", MyEncoder)``; ``--arch resnet_unet --encoder name`` then
trains a U-Net decoder on it (see :class:`~unetkit.models.encoder_unet.EncoderUNet`).
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from .resnet import LAYOUTS, ResNet

Stats = tuple[tuple[float, ...], tuple[float, ...]]  # (mean, std), one value per channel


# A Protocol rather than a base class: an encoder needs nothing from us, so ResNet keeps
# torchvision's module layout (its weight files load as they are) and any nn.Module with
# these members plugs in, also one wrapping a third-party backbone. runtime_checkable lets
# EncoderUNet refuse a module without them in one readable line (members are checked for
# presence only, not for their types).
@runtime_checkable
class Encoder(Protocol):
    """A contracting path for :class:`EncoderUNet`.

    ``features(x)`` takes (B, in_channels, H, W) with H and W multiples of
    ``size_multiple`` and returns one map per stage, shallow to deep: map i has
    ``feature_channels[i]`` channels and stride ``2 ** (i + 1)`` (H / 2 ... H / 2**n), so
    ``size_multiple`` is at least ``2 ** len(feature_channels)``. The decoder upsamples x2
    per stage.

    Optional: ``spatial_dims = 3`` for an encoder of volumes ((B, C, D, H, W), x2 along
    every axis per stage); without it an encoder is 2D. A registered encoder class that
    takes a ``spatial_dims`` argument can be built for either (``--spatial-dims``).
    """

    in_channels: int
    feature_channels: tuple[int, ...]
    size_multiple: int

    def features(self, x: torch.Tensor) -> list[torch.Tensor]: ...


@runtime_checkable
class PretrainedEncoder(Encoder, Protocol):
    """An encoder that can load pretrained weights (optional members of an encoder).

    ``pretrained_normalization`` is a class attribute, so training can read it before any
    network is built: the (mean, std) the pretrained weights expect of [0, 1] images, or
    None when they need no particular statistics.
    """

    pretrained_normalization: Stats | None

    def load_pretrained(self, source: bool | str | os.PathLike) -> None:
        """Load weights in place: True for the default file, or a path."""


@dataclass(frozen=True)
class EncoderEntry:
    """How to build a registered encoder: ``cls(in_channels=..., **kwargs)`` (and
    ``spatial_dims=3`` for volumes)."""

    cls: type[nn.Module]
    kwargs: dict[str, Any] = field(default_factory=dict)

    def build(self, in_channels: int, spatial_dims: int = 2) -> nn.Module:
        if spatial_dims == 2:  # 2D encoders need not know the argument
            return self.cls(in_channels=in_channels, **self.kwargs)
        return self.cls(in_channels=in_channels, spatial_dims=spatial_dims, **self.kwargs)

    @property
    def takes_spatial_dims(self) -> bool:
        """Whether the class can be built for volumes (takes ``spatial_dims``)."""
        try:
            params = inspect.signature(self.cls).parameters
        except (TypeError, ValueError):
            return False
        return "spatial_dims" in params or any(
            p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())

    @property
    def normalization(self) -> Stats | None:
        return getattr(self.cls, "pretrained_normalization", None)


ENCODERS: dict[str, EncoderEntry] = {}


def register_encoder(name: str, cls: type[nn.Module], **kwargs: Any) -> None:
    """Make ``cls(in_channels=..., **kwargs)`` the encoder called ``name``."""
    ENCODERS[name] = EncoderEntry(cls, dict(kwargs))


def encoder_entry(name: str) -> EncoderEntry:
    """The registry entry of ``name``; a ValueError names the known encoders."""
    if name not in ENCODERS:
        raise ValueError(f"unknown encoder {name!r}: expected one of {known(ENCODERS)}")
    return ENCODERS[name]


def build_encoder(name: str, in_channels: int,
                  pretrained: bool | str | os.PathLike = False,
                  spatial_dims: int = 2) -> nn.Module:
    """The encoder ``name`` for ``in_channels`` channels, with pretrained weights loaded
    (``pretrained``: False, True for the encoder's default file, or a path); for
    ``spatial_dims`` 2 (images) or 3 (volumes)."""
    encoder = encoder_entry(name).build(in_channels, spatial_dims)
    if pretrained:
        if not isinstance(encoder, PretrainedEncoder):
            raise ValueError(f"encoder {name!r} has no pretrained weights (no load_pretrained)")
        encoder.load_pretrained(pretrained)
    return encoder


def known(names: Iterable[str]) -> str:
    """``"a, b, c"``: the names a lookup error lists."""
    return ", ".join(names)


for _depth in LAYOUTS:  # resnet18, resnet34, resnet50, resnet101, resnet152
    register_encoder(f"resnet{_depth}", ResNet, depth=_depth, num_classes=None)
