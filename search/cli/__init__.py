"""The ``search`` command line: ``main``, its commands in ``search.cli.main.COMMANDS``."""

from search.cli.main import TTA_VIEWS_HELP, Terminated, main

__all__ = ["TTA_VIEWS_HELP", "Terminated", "main"]
