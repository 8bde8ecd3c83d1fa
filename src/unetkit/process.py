"""Process set-up, before PyTorch is imported: the core count, the memory allocator and
OpenMP's waiting threads. This module must not import torch: the allocator and the
OpenMP policy only take effect in a process that has not loaded it yet.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def available_cores() -> int:
    """CPU cores this process may use (honours taskset/cgroup affinity when visible)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _find_tcmalloc() -> str | None:
    for folder in ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64",
                   "/usr/lib", "/usr/local/lib"):
        for name in ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4"):
            path = os.path.join(folder, name)
            if os.path.exists(path):
                return path
    return None


def relaunch_if_needed(argv: list[str]) -> None:
    """Re-execute once with a fast allocator and polite OpenMP threads.

    glibc's allocator hands large activation buffers back to the kernel after every step
    and faults them in again (we counted 128k-574k page faults per training step);
    tcmalloc keeps them, 1.06-1.93x faster in our measurements. Both settings must be in
    the environment before the process starts (LD_PRELOAD) or before torch loads
    (OMP_WAIT_POLICY), hence the re-exec. UNETKIT_NO_TCMALLOC=1 opts out.
    """
    if os.environ.get("UNETKIT_RELAUNCHED") or "torch" in sys.modules:
        return
    env = dict(os.environ, UNETKIT_RELAUNCHED="1")
    changed = False
    if "OMP_WAIT_POLICY" not in env:
        # Spinning OpenMP threads steal the core the others need: with one other busy
        # process on a 2-core machine, training ran 7.7x slower.
        env["OMP_WAIT_POLICY"] = "PASSIVE"
        changed = True
    lib = None if env.get("UNETKIT_NO_TCMALLOC") else _find_tcmalloc()
    if lib and "tcmalloc" not in env.get("LD_PRELOAD", ""):
        env["LD_PRELOAD"] = ":".join(filter(None, [lib, env.get("LD_PRELOAD", "")]))
        changed = True
    if changed:
        # The new process must find this copy of unetkit even when it is not installed
        # (python train.py in a plain clone puts src/ on sys.path only for itself).
        here = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [here, env.get("PYTHONPATH", "")]))
        os.execve(sys.executable, [sys.executable, "-m", "unetkit", *argv], env)


def tcmalloc_note() -> str | None:
    """One line for the launcher when tcmalloc could not be preloaded because it is not
    installed (None when it is in use, opted out of, or not a Linux machine); only the
    first process of a torchrun job says it."""
    if (not sys.platform.startswith("linux") or os.environ.get("UNETKIT_NO_TCMALLOC")
            or "tcmalloc" in os.environ.get("LD_PRELOAD", "")
            or os.environ.get("RANK", "0") != "0" or _find_tcmalloc()):
        return None
    return ("note: tcmalloc is not installed, so this runs with glibc's allocator: U-Net "
            "training ran up to 1.9x slower without tcmalloc in our measurements; "
            "`make tcmalloc` installs it (UNETKIT_NO_TCMALLOC=1 hides this note)")


def allocator_name() -> str:
    preload = os.environ.get("LD_PRELOAD", "")
    return "tcmalloc" if "tcmalloc" in preload else ("jemalloc" if "jemalloc" in preload
                                                      else "glibc malloc")
