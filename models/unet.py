"""`from models.unet import UNet`: the paper's U-Net (see `unetkit.models.UNet`)."""

from unetkit.models.unet import UNet

__all__ = ["UNet"]
