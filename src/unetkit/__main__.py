"""`python -m unetkit ...` (also what torchrun runs: `torchrun -m unetkit train ...`)."""

import sys

from unetkit.cli import main

sys.exit(main())
