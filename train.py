"""The original design's training script, kept as the entry point it promised.

    python train.py [flags]        is the same as        unetkit train [flags]

Without --data it trains on the built-in demo data; `python train.py --help` lists every
setting. Works under torchrun too: `torchrun --nproc_per_node=2 train.py ...`.
"""

import sys

import models  # noqa: F401  (makes the src/ tree importable in a plain clone)
from unetkit.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]], relaunch=True))
