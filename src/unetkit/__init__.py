"""unetkit: U-Net and ResNet+U-Net semantic segmentation, from scratch in PyTorch."""

__version__ = "0.1.0"
