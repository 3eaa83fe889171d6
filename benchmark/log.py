"""Messages and progress bars: the ``xaibench`` logger and one verbosity switch.

Every module logs through ``logging.getLogger(__name__)`` (children of ``xaibench``). The CLI
calls :func:`configure` once: ``quiet`` shows warnings and errors only, the default adds
progress messages (INFO) and tqdm bars. Library users get Python's default (warnings only)
until they configure logging themselves. Bars are drawn only while INFO is enabled, and
log lines printed while a bar is on screen go through tqdm so that they do not break it.
"""

from __future__ import annotations

import contextlib
import logging
import sys

ROOT = "xaibench"


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (pytest's capture replaces it)."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def configure(quiet: bool = False) -> None:
    """Route xaibench's messages to stderr: warnings only with ``quiet``, else progress too."""
    logger = logging.getLogger(ROOT)
    for handler in [h for h in logger.handlers if isinstance(h, _StderrHandler)]:
        logger.removeHandler(handler)
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)


def progress_enabled() -> bool:
    """True when progress messages and bars are wanted (INFO enabled for xaibench)."""
    return logging.getLogger(ROOT).isEnabledFor(logging.INFO)


def bar(iterable=None, **kwargs):
    """A tqdm progress bar on stderr (with an ETA), drawn only when progress is enabled."""
    from tqdm.auto import tqdm

    kwargs.setdefault("leave", False)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, file=sys.stderr, disable=not progress_enabled(), **kwargs)


@contextlib.contextmanager
def bars_and_logs():
    """Within the block, log lines are written through tqdm (bars stay intact)."""
    from tqdm.contrib.logging import logging_redirect_tqdm

    logger = logging.getLogger(ROOT)
    with logging_redirect_tqdm([logger]):
        yield
