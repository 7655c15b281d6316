"""A ``search`` command as a class (as Optuna's CLI registers them), and the options that
several commands share, each declared here once."""

from __future__ import annotations

import argparse
from typing import ClassVar


class Command:
    """One ``search`` subcommand: its options (``add_arguments``) and its action
    (``take_action``). ``search.cli.main.COMMANDS`` registers it under its name."""

    help: ClassVar[str] = ""  # the line in ``search --help``

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Declare the command's options on its subparser."""

    def take_action(self, args: argparse.Namespace) -> int:
        """Run the command with the parsed options; the exit code."""
        raise NotImplementedError


def add_study(
    parser: argparse.ArgumentParser, *, required: bool = True, help: str | None = None
) -> tuple[argparse.Action, argparse.Action]:
    """``--study`` and ``--profile``; the two actions."""
    study = parser.add_argument("--study", required=required, help=help)
    profile = parser.add_argument(
        "--profile",
        metavar="NAME",
        help="the study file's [profiles.NAME] (e.g. quick); its trials are the study NAME.PROFILE",
    )
    return study, profile


def add_storage(parser: argparse.ArgumentParser) -> argparse.Action:
    """``--storage``."""
    return parser.add_argument(
        "--storage",
        help="Optuna storage URL (default: $SEARCH_STORAGE, the study file's, "
        "or sqlite:///hpsearch.db in the working directory)",
    )


# the names are trainer.evaluate's list_tta_views() and TTA_SETS (a test checks), written out
# so that building the parser does not import torch
TTA_VIEWS_HELP = (
    "comma-separated test-time views or sets to average over instead, e.g. hflip,vflip "
    "(views: identity, hflip, vflip, rotate_p10, rotate_m10, color, blur, crop_center, "
    "crop_tl, crop_tr, crop_bl, crop_br; sets: seed000 = the 6 of --tta, flips, crops, none)"
)


def add_tta(parser: argparse.ArgumentParser) -> None:
    """``--tta`` or ``--tta-views VIEWS`` (one of the two); read them with ``tta_choice``."""
    one = parser.add_mutually_exclusive_group()
    one.add_argument(
        "--tta", action="store_true", help="average logits over seed 000's 6 test-time views"
    )
    one.add_argument("--tta-views", metavar="VIEWS", help=TTA_VIEWS_HELP)


def tta_choice(args: argparse.Namespace) -> str | bool:
    """--tta-views VIEWS (checked here, before any study is opened), else --tta, in one
    spelling per set of views (``trainer.evaluate.tta_key``)."""
    if args.tta_views is None:
        return args.tta
    from trainer.evaluate import tta_key

    return tta_key(args.tta_views)


def stored_study(args: argparse.Namespace) -> tuple[str, str | None]:
    """The stored study ``--study`` names, and its storage: when ``--study`` is a study file
    (a name or a path), the file's study name (``NAME.PROFILE`` under ``--profile``) in the
    storage ``search run`` used for it (``--storage``, ``$SEARCH_STORAGE``, the file's
    ``storage``); otherwise a stored name as given (``NAME.confirm``), with ``--storage``."""
    from search.store import storage as storage_mod
    from search.study.studyfile import find_study_file, load_study

    if not getattr(args, "profile", None):
        try:
            find_study_file(args.study)
        except ValueError:
            return args.study, args.storage  # a stored study without a file of its own
    spec = load_study(args.study, profile=args.profile)
    return spec.name, storage_mod.resolve_url(args.storage, spec.storage)
