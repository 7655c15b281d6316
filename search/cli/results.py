"""Commands that use a study's results: ``evaluate``, ``predict``, ``ablate``, ``confirm``,
``export``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from search.cli.command import (
    Command,
    add_storage,
    add_study,
    add_tta,
    stored_study,
    tta_choice,
)
from search.study.values import parse_assignments


class Evaluate(Command):
    help = "confusion matrix and per-class accuracy of a trial"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_study(parser)
        parser.add_argument("--trial", type=int, help="trial number (default: the best)")
        add_storage(parser)
        parser.add_argument("--data", help="data root, if it moved since the study ran")
        parser.add_argument("--out", help="write the confusion matrix as a plotly HTML figure")
        parser.add_argument("--json", action="store_true")
        parser.add_argument(
            "--split",
            choices=("val", "test"),
            default="val",
            help="evaluate on the validation split (default) or the held-out test split",
        )
        add_tta(parser)

    def take_action(self, args: argparse.Namespace) -> int:
        from search.experiments.evaluate import (
            evaluate_trial,
            print_evaluation,
            write_confusion_figure,
        )
        from search.study.lookup import load_stored

        tta = tta_choice(args)
        study, _ = load_stored(*stored_study(args))
        report = evaluate_trial(study, args.trial, data_root=args.data, split=args.split, tta=tta)
        if args.json:
            print(json.dumps(report, indent=2))
        else:
            print_evaluation(report)
        if args.out:
            write_confusion_figure(report, args.out)  # plotly.min.js beside it: offline
            print(f"confusion matrix figure: {args.out}", file=sys.stderr)
        return 0


class Predict(Command):
    help = "label an unlabeled image folder with a trial's model"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_study(parser)
        parser.add_argument("--data", required=True, help="folder of unlabeled images")
        parser.add_argument("--out", required=True, help="CSV to write (file,label)")
        parser.add_argument("--trial", type=int, help="trial number (default: the best)")
        add_tta(parser)
        add_storage(parser)

    def take_action(self, args: argparse.Namespace) -> int:
        from search.experiments.evaluate import predict_folder
        from search.study.lookup import load_stored

        tta = tta_choice(args)
        study, _ = load_stored(*stored_study(args))
        n = predict_folder(study, args.data, args.out, number=args.trial, tta=tta)
        print(f"wrote {n} predictions to {args.out}", file=sys.stderr)
        return 0


class Ablate(Command):
    help = "one-factor-at-a-time ablation with repeats"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_study(parser)
        parser.add_argument(
            "--factor", action="append", metavar="KEY=V1,V2,...", help="a factor and its values"
        )
        parser.add_argument("--repeats", type=int, help="runs per value, seeds 0..R-1 (default 3)")
        parser.add_argument(
            "--baseline",
            help="best (the study's best trial), defaults (the study's settings), or K=V,K=V",
        )
        parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="fix a setting")
        add_storage(parser)
        parser.add_argument("--data", help="data root (overrides the study file)")
        parser.add_argument("-q", "--quiet", action="store_true")
        parser.add_argument(
            "--test", action="store_true", help="also evaluate every run on the held-out test split"
        )
        add_tta(parser)  # with --test: each run on test without and with the views

    def take_action(self, args: argparse.Namespace) -> int:
        from search.experiments.ablate import parse_factor, plan_ablation, run_ablation
        from search.report.export import print_ablation
        from search.report.progress import Progress
        from search.study.studyfile import load_study

        tta = tta_choice(args)
        if tta and not args.test:
            raise ValueError(
                "--tta in an ablation measures the test-time views on the test split: add --test"
            )
        spec = load_study(args.study, profile=args.profile)
        factors = dict(parse_factor(f) for f in args.factor or [])
        baseline: str | dict[str, Any] | None = args.baseline
        if baseline is not None and "=" in baseline:
            baseline = parse_assignments(baseline.split(","))
        plan = plan_ablation(
            spec,
            factors=factors or None,
            repeats=args.repeats,
            baseline=baseline,
            storage=args.storage,
            data_root=args.data,
            fixed=parse_assignments(args.set),
            test=args.test,
            tta=tta,
        )
        print_ablation(run_ablation(plan, progress=Progress(quiet=args.quiet)))
        return 0


class Confirm(Command):
    help = "retrain the top configurations with fresh seeds; report on test"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_study(parser, help="the search study")
        parser.add_argument(
            "--top", type=int, default=3, help="distinct configurations to confirm (default 3)"
        )
        parser.add_argument("--repeats", type=int, help="runs per configuration (default 5)")
        parser.add_argument(
            "--seeds", nargs="+", metavar="SEED", help="the seeds to use (default: fresh ones)"
        )
        add_tta(parser)
        add_storage(parser)
        parser.add_argument("--data", help="data root, if it moved since the search ran")
        parser.add_argument("-q", "--quiet", action="store_true", help="no per-epoch lines")

    def take_action(self, args: argparse.Namespace) -> int:
        from search.experiments.confirm import plan_confirm, run_confirm
        from search.report.export import print_confirm
        from search.report.progress import Progress

        seeds = None
        if args.seeds is not None:
            try:
                seeds = [int(s) for item in args.seeds for s in item.split(",") if s.strip()]
            except ValueError:
                raise ValueError(
                    f"--seeds takes integers, e.g. --seeds 11 12 13, but got {args.seeds}"
                ) from None
        name, storage = stored_study(args)
        plan = plan_confirm(
            name,
            storage=storage,
            top=args.top,
            repeats=args.repeats,
            seeds=seeds,
            tta=tta_choice(args),
            data_root=args.data,
        )
        print_confirm(run_confirm(plan, progress=Progress(quiet=args.quiet)))
        return 0


class Export(Command):
    help = "tables and figures of a study and its ablation"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_study(parser)
        parser.add_argument("--out", required=True, help="output directory (created)")
        parser.add_argument(
            "--format", default="md,csv,tex,html,json", help="comma-separated formats"
        )
        add_storage(parser)

    def take_action(self, args: argparse.Namespace) -> int:
        from search.report.export import export_study

        formats = [f.strip() for f in args.format.split(",") if f.strip()]
        name, storage = stored_study(args)
        written = export_study(name, storage=storage, out_dir=args.out, formats=formats)
        print(f"wrote {len(written)} files to {args.out}", file=sys.stderr)
        return 0
