"""unetkit's messages go through Python's ``logging``, under the ``unetkit`` logger.

By default they are written to standard output through ``tqdm.write`` (so progress bars
stay intact), INFO and above, as the command line shows them. A Python user silences or
redirects them the usual way::

    import logging
    logging.getLogger("unetkit").setLevel(logging.WARNING)      # only warnings and errors
    logging.getLogger("unetkit").handlers = [my_handler]         # somewhere else

The command line sets the level with ``--quiet`` (warnings only) and ``--verbose``
(debug). Progress bars are tqdm's and follow ``--quiet`` / ``progress=False``.
"""

from __future__ import annotations

import logging

from tqdm.auto import tqdm

LOGGER = logging.getLogger("unetkit")


class TqdmHandler(logging.Handler):
    """Writes records with ``tqdm.write`` to the current standard output (warnings and
    errors to standard error), so they appear above any progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        import sys

        try:
            stream = sys.stderr if record.levelno >= logging.WARNING else sys.stdout
            tqdm.write(self.format(record), file=stream)
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


def _default_handler() -> None:
    if not LOGGER.handlers:
        handler = TqdmHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        LOGGER.addHandler(handler)
        LOGGER.setLevel(logging.INFO)
        LOGGER.propagate = False  # shown once, not again by a root handler


_default_handler()


def get_logger(name: str) -> logging.Logger:
    """The logger of module ``name`` (``unetkit.training`` ...), under ``unetkit``."""
    return logging.getLogger(name)


def set_verbosity(quiet: bool = False, verbose: bool = False) -> None:
    """The command line's ``--quiet`` (warnings only) and ``--verbose`` (debug)."""
    LOGGER.setLevel(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)
