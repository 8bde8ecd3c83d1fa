"""Test-wide process settings, applied before PyTorch is imported."""

import os

# Threads that spin while waiting make a 2-core machine crawl when anything else runs
# (see unetkit.runtime.configure_threads); the launcher sets this for users too.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Tests never reach for the network: a missing weight file fails at once.
os.environ.setdefault("UNETKIT_OFFLINE", "1")


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` are skipped on a machine without a CUDA device."""
    cuda = [item for item in items if "cuda" in item.keywords]
    if not cuda:
        return
    import pytest
    import torch

    if not torch.cuda.is_available():
        for item in cuda:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))


def pytest_report_header(config):
    """Which precision "auto" means in this run: tests that compare numbers depend on it."""
    import torch

    from unetkit.runtime import PRECISION_ENV, precision_name, select_precision

    dtype = select_precision(torch.device("cpu"))
    chosen = os.environ.get(PRECISION_ENV) or "unset"
    return (f"unetkit: precision auto = {precision_name(dtype)} on this CPU "
            f"({PRECISION_ENV}={chosen})")
