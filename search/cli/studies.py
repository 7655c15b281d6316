"""Commands that write, list and show studies: ``init``, ``space``, ``list``, ``best``,
``dashboard``."""

from __future__ import annotations

import argparse
import json

from search.cli.command import Command, add_storage, add_study, stored_study
from search.study.values import parse_assignments


class Space(Command):
    help = "the resolved search space of a study, parameter by parameter"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_study(parser, help="study file name (see `search list`)")
        parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="fix a parameter")

    def take_action(self, args: argparse.Namespace) -> int:
        from search.report.space import format_space, space_rows
        from search.study.studyfile import load_study

        spec = load_study(args.study, profile=args.profile)
        print(format_space(spec, space_rows(spec, parse_assignments(args.set))))
        return 0


class Best(Command):
    help = "the best trial of a study"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_study(parser)
        add_storage(parser)
        parser.add_argument("--json", action="store_true", help="machine-readable output")

    def take_action(self, args: argparse.Namespace) -> int:
        from search.report.summary import best_record, print_best
        from search.study.lookup import load_stored

        study, url = load_stored(*stored_study(args))
        if args.json:
            print(json.dumps(best_record(study), indent=2))
        else:
            print_best(study, url)
        return 0


class List(Command):
    help = "studies in files and in the storage"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_storage(parser)

    def take_action(self, args: argparse.Namespace) -> int:
        from search.report.summary import print_list

        print_list(args.storage)
        return 0


class Init(Command):
    help = "write a study file that fits an image folder and this machine"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "folder", help="image folder (class subfolders, <label>_<id> files) or manifest"
        )
        parser.add_argument("--name", help="study name (default: the folder's name)")
        parser.add_argument("--out", help="study file to write (default: studies/NAME.toml)")
        parser.add_argument(
            "--budget",
            default="10m",
            help="the wall-clock budget the study is sized for: 10m, 2h, ... (default 10m)",
        )
        parser.add_argument("--force", action="store_true", help="overwrite an existing study file")
        parser.add_argument(
            "--remeasure",
            action="store_true",
            help="probe training speed again, not from the cache",
        )

    def take_action(self, args: argparse.Namespace) -> int:
        from search.experiments.init import init_study

        init_study(
            args.folder,
            name=args.name,
            out=args.out,
            wall=args.budget,
            force=args.force,
            remeasure=args.remeasure,
        )
        return 0


class Dashboard(Command):
    help = "open optuna-dashboard on a study's storage"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_study(parser, required=False, help="study whose storage and artifacts to browse")
        add_storage(parser)
        parser.add_argument(
            "--host", default="127.0.0.1", help="bind address (default: loopback only)"
        )
        parser.add_argument("--port", type=int, default=8080)

    def take_action(self, args: argparse.Namespace) -> int:
        from search.report.dashboard import launch

        if args.profile and not args.study:
            raise ValueError("--profile needs --study NAME")
        name, storage = stored_study(args) if args.study else (None, args.storage)
        return launch(study=name, storage=storage, host=args.host, port=args.port)
