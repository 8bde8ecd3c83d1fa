"""Test-wide process settings, applied before PyTorch is imported."""

import os

# Threads that spin while waiting make a 2-core machine crawl when anything else runs
# (see unetkit.runtime.configure_threads); the launcher sets this for users too.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Tests never reach for the network: a missing weight file fails at once.
os.environ.setdefault("UNETKIT_OFFLINE", "1")
