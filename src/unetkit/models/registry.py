"""The architectures by name (``model.arch``): :func:`build_model` turns a ModelConfig into
a network, :func:`check_model` refuses unknown names before anything is read or written,
and :func:`pretrained_normalization` says which statistics pretrained weights expect.

``config.py`` cannot list the names (this module imports it), so the accepted values of
``--arch`` and ``--encoder`` are these registries' keys, checked here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..config import ModelConfig, setting_error
from .encoder_unet import EncoderUNet
from .encoders import ENCODERS, Stats, build_encoder, encoder_entry, known
from .unet import UNet

Builder = Callable[[ModelConfig, bool], nn.Module]  # (config, load_pretrained) -> network


@dataclass(frozen=True)
class Architecture:
    build: Builder
    uses_encoder: bool = False  # reads model.encoder / resnet_depth and model.pretrained


ARCHITECTURES: dict[str, Architecture] = {}


def register_architecture(name: str, uses_encoder: bool = False) -> Callable[[Builder], Builder]:
    """Decorator: make ``build(cfg, load_pretrained)`` the architecture called ``name``."""
    def register(build: Builder) -> Builder:
        ARCHITECTURES[name] = Architecture(build, uses_encoder)
        return build
    return register


def encoder_name(cfg: ModelConfig) -> str:
    """The encoder a config names: ``model.encoder``, else ``resnet{resnet_depth}`` (the
    configs and checkpoints written before encoders had names)."""
    return cfg.encoder or f"resnet{cfg.resnet_depth}"


def check_model(cfg: ModelConfig) -> None:
    """Raise SettingError (``--arch X: expected one of unet, resnet_unet``) for an unknown
    architecture or encoder name, pretrained weights the encoder cannot load (none exist
    in 3D), or a spacing that does not give one value per spatial axis."""
    if cfg.arch not in ARCHITECTURES:
        raise setting_error("model", "arch", cfg.arch, "one of " + known(ARCHITECTURES))
    if cfg.spacing and len(cfg.spacing) != cfg.spatial_dims:
        raise setting_error("model", "spacing", tuple(cfg.spacing),
                            f"{cfg.spatial_dims} values, one per axis (--spatial-dims "
                            f"{cfg.spatial_dims}), or none for isotropic voxels")
    if not ARCHITECTURES[cfg.arch].uses_encoder:
        return
    name = encoder_name(cfg)
    if name not in ENCODERS:
        raise setting_error("model", "encoder", cfg.encoder, "one of " + known(ENCODERS))
    if cfg.pretrained and cfg.spatial_dims != 2:
        raise setting_error("model", "pretrained", cfg.pretrained,
                            f"false: no ImageNet weights exist for {cfg.spatial_dims}D "
                            f"(--spatial-dims {cfg.spatial_dims})")
    if cfg.pretrained and not hasattr(ENCODERS[name].cls, "load_pretrained"):
        raise setting_error("model", "pretrained", cfg.pretrained,
                            f"false: encoder {name} has no pretrained weights")
    if cfg.spatial_dims != 2 and not ENCODERS[name].takes_spatial_dims:
        raise setting_error("model", "spatial_dims", cfg.spatial_dims,
                            f"2: encoder {name} is 2D only (it takes no spatial_dims)")
    if cfg.spacing and any(s != cfg.spacing[0] for s in cfg.spacing):
        raise setting_error("model", "spacing", tuple(cfg.spacing),
                            f"none or isotropic for --arch {cfg.arch}: its encoder "
                            "downsamples every axis alike (anisotropic planning: --arch unet)")
    _check_decoder(cfg, name)


def _check_decoder(cfg: ModelConfig, name: str) -> None:
    """One decoder width per encoder stage. The encoder is built on the "meta" device,
    which allocates nothing, just to count its stages before any data is read."""
    with torch.device("meta"):
        encoder = encoder_entry(name).build(cfg.in_channels, cfg.spatial_dims)
        stages = len(encoder.feature_channels)
    if len(cfg.decoder_channels) != stages:
        raise setting_error("model", "decoder_channels", tuple(cfg.decoder_channels),
                            f"{stages} values, one per stage of encoder {name}")


def encoder_size_multiple(cfg: ModelConfig) -> int | None:
    """How much an encoder-based model downsamples (its input is padded to a multiple of
    it); None for architectures without an encoder."""
    check_model(cfg)
    if not ARCHITECTURES[cfg.arch].uses_encoder:
        return None
    return int(getattr(ENCODERS[encoder_name(cfg)].cls, "size_multiple", 32))


def build_model(cfg: ModelConfig, load_pretrained: bool = True) -> nn.Module:
    """The network described by ``cfg``. ``load_pretrained=False`` skips reading pretrained
    weights (used when a checkpoint's own weights replace them anyway)."""
    check_model(cfg)
    return ARCHITECTURES[cfg.arch].build(cfg, load_pretrained)


def pretrained_normalization(cfg: ModelConfig) -> Stats | None:
    """(mean, std) that the model's pretrained weights expect of [0, 1] images, or None:
    no pretrained weights, or none that need particular statistics."""
    check_model(cfg)
    if not (ARCHITECTURES[cfg.arch].uses_encoder and cfg.pretrained):
        return None
    return encoder_entry(encoder_name(cfg)).normalization


# --------------------------------------------------------------------------- builders


@register_architecture("unet")
def _unet(cfg: ModelConfig, load_pretrained: bool) -> nn.Module:
    return UNet(
        cfg.in_channels, cfg.out_channels, features=cfg.features, depth=cfg.depth,
        padding=cfg.padding, upsample=cfg.upsample, norm=cfg.norm, dropout=cfg.dropout,
        spatial_dims=cfg.spatial_dims, spacing=cfg.spacing or None,
        deep_supervision=cfg.deep_supervision,
    )


@register_architecture("resnet_unet", uses_encoder=True)
def _encoder_unet(cfg: ModelConfig, load_pretrained: bool) -> nn.Module:
    """U-Net decoder on the named encoder (a ResNet unless ``model.encoder`` says else)."""
    name = encoder_name(cfg)
    encoder = build_encoder(name, cfg.in_channels, cfg.pretrained if load_pretrained else False,
                            spatial_dims=cfg.spatial_dims)
    return EncoderUNet(encoder, cfg.out_channels, tuple(cfg.decoder_channels),
                       cfg.freeze_encoder, deep_supervision=cfg.deep_supervision)
