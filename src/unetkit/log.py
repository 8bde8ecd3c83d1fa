"""unetkit's messages go through Python's ``logging``, under the ``unetkit`` logger.

As a library, unetkit shows nothing by itself: the logger has only a ``NullHandler``, and
its records propagate to the root logger, so a Python user sees them the usual way::

    import logging
    logging.basicConfig(level=logging.INFO)                      # epoch lines and notes
    logging.getLogger("unetkit").setLevel(logging.WARNING)       # only warnings and errors

The command line installs the console (:func:`console`): INFO and above written through
``tqdm.write`` (so progress bars stay intact), warnings and errors to standard error;
``--quiet`` shows warnings only, ``--verbose`` debug messages too. Progress bars are
tqdm's and follow ``--quiet`` / ``progress=False``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from tqdm.auto import tqdm

LOGGER = logging.getLogger("unetkit")
LOGGER.addHandler(logging.NullHandler())  # a library's manners: the application decides


class TqdmHandler(logging.Handler):
    """Writes records with ``tqdm.write`` to the current standard output (warnings and
    errors to standard error), so they appear above any progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = sys.stderr if record.levelno >= logging.WARNING else sys.stdout
            tqdm.write(self.format(record), file=stream)
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


def get_logger(name: str) -> logging.Logger:
    """The logger of module ``name`` (``unetkit.training`` ...), under ``unetkit``."""
    return logging.getLogger(name)


def set_verbosity(quiet: bool = False, verbose: bool = False) -> None:
    """The command line's ``--quiet`` (warnings only) and ``--verbose`` (debug)."""
    LOGGER.setLevel(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)


@contextmanager
def console(quiet: bool = False, verbose: bool = False) -> Iterator[None]:
    """The command line's console for the duration of a command: the messages on the
    terminal at the level of ``--quiet`` / ``--verbose``, shown once (not again by a root
    handler); the logger is as it was afterwards (``main()`` may run inside a Python
    process)."""
    handler = TqdmHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    level, propagate = LOGGER.level, LOGGER.propagate
    LOGGER.addHandler(handler)
    LOGGER.propagate = False
    set_verbosity(quiet, verbose)
    try:
        yield
    finally:
        LOGGER.removeHandler(handler)
        LOGGER.setLevel(level)
        LOGGER.propagate = propagate
