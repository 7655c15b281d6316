"""The exit codes of the ``search`` command. The worker launcher reads them back from its
worker processes and passes them on."""

from __future__ import annotations

USAGE = 2  # bad input: one ``error: ...`` line
INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)
TERMINATED = 143  # SIGTERM (128 + SIGTERM)
