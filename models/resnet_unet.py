"""`from models.resnet_unet import ResNetUNet` (see `unetkit.models.ResNetUNet`)."""

from unetkit.models.resnet import ResNet
from unetkit.models.resnet_unet import IMAGENET_MEAN, IMAGENET_STD, ResNetUNet

__all__ = ["ResNetUNet", "ResNet", "IMAGENET_MEAN", "IMAGENET_STD"]
