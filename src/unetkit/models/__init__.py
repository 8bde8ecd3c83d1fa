"""The networks: UNet, ResNet (torchvision-compatible) and ResNetUNet."""

from ..config import IMAGENET_MEAN, IMAGENET_STD
from .fuse import fold_batchnorm
from .resnet import ResNet
from .resnet_unet import ResNetUNet
from .unet import UNet

__all__ = ["UNet", "ResNet", "ResNetUNet", "IMAGENET_MEAN", "IMAGENET_STD", "fold_batchnorm"]
