"""The errors a user can cause, and how a failed write is reported.

Everything here is a problem with the user's input or machine (a bad setting, a bad file,
a full disk, a diverging run), never a bug: the command line prints its message as one
line and exits with code 2, without a traceback (``--debug`` shows it).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class UserError(Exception):
    """Base of the errors whose message is the whole story for the user."""


class WriteError(UserError, OSError):
    """A file or folder could not be written (disk full, no permission, ...)."""


def free_space(path: str | Path) -> str:
    """Free space on the file system holding ``path`` (or its nearest existing parent),
    as text such as "1.2 GiB free", or "free space unknown"."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        free = shutil.disk_usage(path).free
    except OSError:
        return "free space unknown"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if free < 1024 or unit == "GiB":
            return f"{free:.0f} {unit} free" if unit == "B" else f"{free:.1f} {unit} free"
        free /= 1024
    return "free space unknown"  # pragma: no cover


@contextmanager
def writing(what: str, path: str | Path, cleanup: str | Path | None = None) -> Iterator[None]:
    """Turn any failure inside the block into one :class:`WriteError` line naming ``what``,
    ``path`` and the free space there; ``cleanup`` (a temporary file or folder) is removed
    first so nothing half-written stays behind.

    Catches more than OSError on purpose: writers such as safetensors and matplotlib wrap
    the operating system's error in their own exception types.
    """
    try:
        yield
    except WriteError:
        remove_quietly(cleanup)
        raise
    except Exception as err:
        if not _is_write_failure(err):
            raise
        remove_quietly(cleanup)
        reason = getattr(err, "strerror", None) or str(err).splitlines()[0] or type(err).__name__
        raise WriteError(f"could not write {what} to {path}: {reason} "
                         f"({free_space(path)} there)") from err


@contextmanager
def replacing(what: str, path: str | Path) -> Iterator[Path]:
    """Write ``path`` through a temporary sibling that is renamed over it at the end: the
    block writes to the yielded path; a failure is one WriteError and leaves the previous
    file as it was."""
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    with writing(what, path, cleanup=tmp):
        yield tmp
        os.replace(tmp, path)


def _is_write_failure(err: BaseException) -> bool:
    """OSError anywhere in the chain, or a writer library's own error type (safetensors
    raises SafetensorError with the OS message as text)."""
    seen = err
    while seen is not None:
        if isinstance(seen, OSError):
            return True
        seen = seen.__cause__ or seen.__context__
    return type(err).__name__ in ("SafetensorError",)


def remove_quietly(path: str | Path | None) -> None:
    """Remove a file or folder if it is there; never raises."""
    if path is None:
        return
    path = Path(path)
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            os.remove(path)
        except OSError:
            pass
