"""The ``search`` command line. Bad input: one ``error: ...`` line and exit code 2.

Each command is a ``Command`` class (``search.cli.command``) with its options and its action,
registered in ``COMMANDS``; ``main`` parses, dispatches, and turns errors and signals into
messages and exit codes.

Errors a user can fix and errors that are bugs are told apart by where they were raised. The
code checks its input up front and raises ValueError/TypeError with a message that names the
problem and the fix, from hundreds of places; a subclass for them would have to be threaded
through all of them, and one forgotten would turn a usage error into a "bug". Instead: a
ValueError/TypeError raised by a ``raise`` statement of hpsearch's own code is a usage error
(exit 2, its message); anything else (KeyError, AttributeError, IndexError, an assert, a
ValueError from a library or a builtin call, a torch RuntimeError) is a bug: exit 1, one line
that says so, and the traceback in a log file under the cache folder, or on stderr with
``--debug`` (or ``HPSEARCH_DEBUG=1``).
"""

from __future__ import annotations

import argparse
import dis
import logging
import os
import signal
import sys
import time
import traceback
import warnings
from pathlib import Path

from search import exit_codes
from search.cli.command import TTA_VIEWS_HELP, Command
from search.cli.results import Ablate, Confirm, Evaluate, Export, Predict
from search.cli.run import Run
from search.cli.studies import Best, Dashboard, Init, List, Space

__all__ = ["COMMANDS", "TTA_VIEWS_HELP", "Terminated", "build_parser", "deliberate", "main"]

FAILED = 1  # a run that failed (storage, trials in a row), or an internal error (a bug)

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
    debug_help = "print the traceback of an internal error (a bug) instead of logging it"
    parser.add_argument("--debug", action="store_true", help=debug_help)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command_type in COMMANDS.items():
        command = command_type()
        p = sub.add_parser(name, help=command.help)
        command.add_arguments(p)
        # after the command too (search run --debug ...); SUPPRESS keeps a --debug given first
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug_help)
        p.set_defaults(func=command.take_action)
    return parser


# the folders of our own packages: a raise statement there is a deliberate error
_OWN_CODE = tuple(
    os.path.realpath(Path(__file__).parents[2] / name) + os.sep
    for name in ("search", "spaces", "trainer")
)


_RAISE = dis.opmap["RAISE_VARARGS"]


def deliberate(exc: BaseException) -> bool:
    """Whether ``exc`` was raised on purpose by hpsearch: by a ``raise`` statement in its own
    code (a check with a message), rather than by a library, a builtin, or a wrong call. The
    instruction that raised it is read from the bytecode, not the source, which may have
    changed on disk since it was imported."""
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:  # the innermost frame: where it was raised
        tb = tb.tb_next
    code = tb.tb_frame.f_code
    if not os.path.realpath(code.co_filename).startswith(_OWN_CODE):
        return False
    return code.co_code[tb.tb_lasti] == _RAISE  # a bare re-raise keeps the first frame


def _log_dir() -> Path:
    from trainer._cache import cache_root

    return cache_root() / "logs"


def _write_log(text: str) -> Path | None:
    """The traceback in a new file under the cache folder's ``logs``; None if it cannot."""
    try:
        folder = _log_dir()
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"error-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
        path.write_text(text, encoding="utf-8")
        return path
    except Exception:  # no log: the traceback goes to stderr instead
        return None


def report_bug(exc: BaseException, *, debug: bool, argv: list[str]) -> int:
    """An internal error of ``search ARGV``: one line saying it is a bug and where its
    traceback is (on stderr above it with ``debug``, else a log file); exit code 1."""
    from search.store.storage import redact

    text = redact("".join(traceback.format_exception(exc)))
    where = None if debug else _write_log(redact(f"search {' '.join(argv)}\n{text}"))
    if where is None:
        print(text.rstrip(), file=sys.stderr)
    first = redact(f"{type(exc).__name__}: {exc}".splitlines()[0])
    told = f"traceback in {where}" if where else "traceback above"
    print(
        f"error: internal error, a bug in hpsearch ({first}); {told}; please report it",
        file=sys.stderr,
    )
    return FAILED


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
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    debug = args.debug or os.environ.get("HPSEARCH_DEBUG", "") not in ("", "0")

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
        if not deliberate(exc):
            return report_bug(exc, debug=debug, argv=argv)
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
    except Exception as exc:
        import sqlalchemy.exc
        from optuna.exceptions import StorageInternalError

        from search.store.storage import error_line, redact

        if isinstance(exc, sqlalchemy.exc.SQLAlchemyError | StorageInternalError):
            print(f"error: storage: {error_line(exc)}", file=sys.stderr)
            return FAILED
        if isinstance(exc, RuntimeError) and deliberate(exc):  # e.g. trials in a row failed
            print(f"error: {redact(str(exc))}", file=sys.stderr)
            return FAILED
        return report_bug(exc, debug=debug, argv=argv)
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
