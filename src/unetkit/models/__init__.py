"""The networks: UNet, ResNet (torchvision-compatible), EncoderUNet / ResNetUNet, and the
registries that build them by name (architectures, encoders); 2D or 3D (``spatial_dims``)."""

from ..config import IMAGENET_MEAN, IMAGENET_STD
from .anisotropy import anisotropic_stages
from .encoder_unet import EncoderUNet
from .encoders import ENCODERS, Encoder, PretrainedEncoder, build_encoder, register_encoder
from .fuse import fold_batchnorm
from .registry import (
    ARCHITECTURES,
    build_model,
    check_model,
    encoder_name,
    pretrained_normalization,
    register_architecture,
)
from .resnet import ResNet
from .resnet_unet import ResNetUNet
from .unet import UNet

__all__ = ["UNet", "ResNet", "ResNetUNet", "EncoderUNet", "IMAGENET_MEAN", "IMAGENET_STD",
           "fold_batchnorm", "Encoder", "PretrainedEncoder", "ENCODERS", "register_encoder",
           "build_encoder", "ARCHITECTURES", "register_architecture", "build_model",
           "check_model", "encoder_name", "pretrained_normalization", "anisotropic_stages"]
