"""The original design's import path (`from models.unet import UNet`), kept so its examples
run verbatim from the repository root. The code lives in the `unetkit` package."""

import sys
from pathlib import Path

try:
    import unetkit  # noqa: F401
except ImportError:  # a plain clone without `pip install`: use the source tree
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
