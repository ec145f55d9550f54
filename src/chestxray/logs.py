"""The project's one logger ("chestxray") and its one setup: messages on stderr, set once per process."""

from __future__ import annotations

import logging
import sys

log = logging.getLogger("chestxray")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time of the message (a test runner may swap it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def setup_logging(verbose: bool = False) -> None:
    """The project's messages on stderr, bare: INFO and above, DEBUG with `verbose`. Called by each command of the CLI
    and by a process the package starts for itself (a crossval fold); calling it again replaces its handler."""
    for h in [h for h in log.handlers if isinstance(h, _StderrHandler)]:
        log.removeHandler(h)
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    log.propagate = False
