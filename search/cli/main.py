"""The ``search`` command line. Bad input: one ``error: ...`` line and exit code 2.

Each command is a ``Command`` class (``search.cli.command``) with its options and its action,
registered in ``COMMANDS``; ``main`` parses, dispatches, and turns errors and signals into
messages and exit codes.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import warnings

from search import exit_codes
from search.cli.command import TTA_VIEWS_HELP, Command
from search.cli.results import Ablate, Confirm, Evaluate, Export, Predict
from search.cli.run import Run
from search.cli.studies import Best, Dashboard, Init, List, Space

__all__ = ["COMMANDS", "TTA_VIEWS_HELP", "Terminated", "build_parser", "main"]

# every command, in the order `search --help` lists them
COMMANDS: dict[str, type[Command]] = {
    "run": Run,
    "space": Space,
    "best": Best,
    "list": List,
    "evaluate": Evaluate,
    "predict": Predict,
    "ablate": Ablate,
    "confirm": Confirm,
    "export": Export,
    "init": Init,
    "dashboard": Dashboard,
}


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C (the running trial is marked failed) but exit code 143."""

    reason = "terminated by SIGTERM"


def build_parser() -> argparse.ArgumentParser:
    """The ``search`` parser: a subparser per registered command, dispatching to its action."""
    parser = argparse.ArgumentParser(
        prog="search", description="Hyperparameter search and ablation for image classifiers."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command_type in COMMANDS.items():
        command = command_type()
        p = sub.add_parser(name, help=command.help)
        command.add_arguments(p)
        p.set_defaults(func=command.take_action)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Every warning as one ``warning: ...`` line: no source path, no code line."""
    text = (str(message).strip().splitlines() or [category.__name__])[0]
    try:
        print(f"warning: {text}", file=file or sys.stderr, flush=True)
    except (OSError, ValueError):  # a closed stream: a warning must never fail a command
        pass


# Library noise that says nothing a user can act on: Optuna's experimental-API notices, and
# deprecation notices of torch / timm / torchvision internals.
_IGNORED_WARNINGS = (
    ("ignore", r".*is experimental", Warning, ""),
    ("ignore", "", DeprecationWarning, r"(torch|timm|torchvision|optuna)(\.|$)"),
    ("ignore", "", FutureWarning, r"(torch|timm|torchvision|optuna)(\.|$)"),
)


_LOGGERS = ("hpsearch", "trainer")


class _LogLines(logging.StreamHandler):
    """Our loggers' warnings and errors as ``warning: ...`` / ``error: ...`` lines on stderr."""

    def __init__(self) -> None:
        super().__init__()
        self.setLevel(logging.WARNING)

    @property
    def stream(self):  # whatever sys.stderr is now (tests swap it)
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass

    def format(self, record: logging.LogRecord) -> str:
        text = (record.getMessage().strip().splitlines() or [""])[0]
        return f"{record.levelname.lower()}: {text}"


def main(argv: list[str] | None = None) -> int:
    """Run ``search ARGV`` (default: the process's arguments); the exit code."""
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    args = build_parser().parse_args(argv)

    def on_sigterm(signum, frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    saved_warnings = warnings.showwarning, list(warnings.filters)
    warnings.showwarning = _show_warning
    for action, message, category, module in _IGNORED_WARNINGS:
        warnings.filterwarnings(action, message=message, category=category, module=module)
    handler = _LogLines()
    for name in _LOGGERS:
        logging.getLogger(name).addHandler(handler)
    faults = None
    if os.environ.get("HPSEARCH_FAULTS"):  # tests' fault injection, installed once, here
        from trainer import _faults

        faults = _faults.install(_faults.from_env())
    try:
        return args.func(args)
    except (ValueError, TypeError) as exc:
        from search.store.storage import redact

        print(
            f"error: {(redact(str(exc)).splitlines() or [type(exc).__name__])[0]}", file=sys.stderr
        )
        return exit_codes.USAGE
    except Terminated:
        print("\nterminated: the running trial is marked failed; rerun to go on", file=sys.stderr)
        return exit_codes.TERMINATED
    except KeyboardInterrupt:
        print("\ninterrupted: the running trial is marked failed; rerun to go on", file=sys.stderr)
        return exit_codes.INTERRUPTED
    except RuntimeError as exc:
        from search.store.storage import redact

        print(f"error: {redact(str(exc))}", file=sys.stderr)
        return 1
    except Exception as exc:
        import sqlalchemy.exc
        from optuna.exceptions import StorageInternalError

        if not isinstance(exc, sqlalchemy.exc.SQLAlchemyError | StorageInternalError):
            raise
        from search.store.storage import error_line

        print(f"error: storage: {error_line(exc)}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
        warnings.showwarning = saved_warnings[0]
        warnings.filters[:] = saved_warnings[1]
        for name in _LOGGERS:
            logging.getLogger(name).removeHandler(handler)
        if os.environ.get("HPSEARCH_FAULTS"):
            from trainer import _faults

            _faults.install(faults)


if __name__ == "__main__":
    sys.exit(main())
