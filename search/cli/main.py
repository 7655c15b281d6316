"""The ``search`` command line. Bad input: one ``error: ...`` line and exit code 2."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import warnings
from typing import Any

from search.study.values import parse_assignments

EXIT_USAGE, EXIT_INTERRUPTED, EXIT_TERMINATED = 2, 130, 143


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C (the running trial is marked failed) but exit code 143."""

    reason = "terminated by SIGTERM"


def _cmd_run(args: argparse.Namespace) -> int:
    import time

    started = time.monotonic()  # the wall-clock budget counts from here
    from search.experiments.run import plan_run, run_study
    from search.report.summary import print_summary
    from search.store.workers import WorkerOptions
    from search.study.budget import resolve_budget
    from search.study.studyfile import load_study

    options = WorkerOptions(heartbeat=args.heartbeat, grace=args.grace, max_retries=args.retries)
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, but got {args.threads}")
    spec = load_study(args.study, profile=args.profile)
    budget = resolve_budget(
        spec.budget,
        where=str(spec.path),
        wall=args.budget,
        max_trial_minutes=args.max_trial_minutes,
    )
    if args.trials is None and budget.wall_seconds is None:
        raise ValueError(
            "--trials N is needed unless a wall-clock budget is given "
            "(--budget 30m, or budget.wall in the study file)"
        )
    enqueue = [parse_assignments(item.split(",")) for item in args.enqueue or []]
    plan = plan_run(
        spec,
        storage=args.storage,
        fixed=parse_assignments(args.set),
        enqueue=enqueue,
        data_root=args.data,
        force=args.force,
    )
    if args.dry_run:
        from search.experiments.run import dry_run
        from search.report.summary import print_dry_run

        print_dry_run(plan, dry_run(plan))
        return 0
    if args.trials is not None and args.trials < 1:
        raise ValueError(f"--trials must be >= 1, but got {args.trials}")
    from search.report.progress import Progress
    from search.store import storage as storage_mod

    storage_mod.check_workers(plan.url, args.workers)
    if args.workers > 1:
        return _run_workers(args, plan, budget=budget, started=started)
    if args.worker_child:
        from search.experiments.launcher import watch_parent

        watch_parent()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    study = run_study(
        plan,
        n_trials=args.trials,
        timeout=args.timeout,
        progress=Progress(quiet=args.quiet),
        options=options,
        announce=not args.worker_child,
        budget=budget,
        started=started,
    )
    if not args.worker_child:
        print_summary(study, plan.url)
    return 0


def _run_workers(args: argparse.Namespace, plan, *, budget, started: float) -> int:
    """--workers K: create the study here, then K worker processes fill it."""
    import time

    from search.experiments.launcher import launch
    from search.experiments.run import UNLIMITED, prepare_study
    from search.report.summary import print_summary
    from search.store import storage as storage_mod
    from search.store.workers import SlotClaimer, WorkerOptions

    storage, study = prepare_study(plan)
    claimer = SlotClaimer(
        study,
        storage=storage,
        url=plan.url,
        n_trials=args.trials if args.trials is not None else UNLIMITED,
        options=WorkerOptions(),
    )
    done = claimer.finished(claimer.counts())
    print(
        f"study {plan.spec.name!r}: {done}"
        + (f" of {args.trials}" if args.trials is not None else "")
        + f" trials finished; storage {storage_mod.mask_url(plan.url)}",
        file=sys.stderr,
    )
    if budget.wall_seconds is not None:  # the workers get what is left of this command's
        args.budget = f"{max(1.0, budget.wall_seconds - (time.monotonic() - started)):.1f}"
    code = launch(args, url=plan.url, workers=args.workers)
    if code in (EXIT_USAGE, EXIT_INTERRUPTED, EXIT_TERMINATED):
        if code != EXIT_USAGE:
            print("\nstopped: running trials are marked failed; rerun to go on", file=sys.stderr)
        return code
    done = claimer.finished(claimer.counts())
    if (
        args.trials is not None
        and done < args.trials
        and args.timeout is None
        and not budget.wall_seconds
    ):
        msg = f"error: the study holds {done} of {args.trials} finished trials; rerun to go on"
        print(msg, file=sys.stderr)
        return 1
    print_summary(study, plan.url)
    return 0


def _cmd_space(args: argparse.Namespace) -> int:
    from search.report.space import format_space, space_rows
    from search.study.studyfile import load_study

    spec = load_study(args.study, profile=args.profile)
    print(format_space(spec, space_rows(spec, parse_assignments(args.set))))
    return 0


def _cmd_best(args: argparse.Namespace) -> int:
    from search.report.summary import best_record, print_best
    from search.study.lookup import load_stored

    study, url = load_stored(*_stored(args))
    if args.json:
        print(json.dumps(best_record(study), indent=2))
    else:
        print_best(study, url)
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from search.report.summary import print_list

    print_list(args.storage)
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from search.experiments.evaluate import confusion_figure, evaluate_trial, print_evaluation
    from search.study.lookup import load_stored

    tta = _tta(args)
    study, _ = load_stored(*_stored(args))
    report = evaluate_trial(study, args.trial, data_root=args.data, split=args.split, tta=tta)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_evaluation(report)
    if args.out:
        confusion_figure(report).write_html(args.out, include_plotlyjs="cdn")
        print(f"confusion matrix figure: {args.out}", file=sys.stderr)
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from search.experiments.evaluate import predict_folder
    from search.study.lookup import load_stored

    tta = _tta(args)
    study, _ = load_stored(*_stored(args))
    n = predict_folder(study, args.data, args.out, number=args.trial, tta=tta)
    print(f"wrote {n} predictions to {args.out}", file=sys.stderr)
    return 0


def _tta(args: argparse.Namespace) -> str | bool:
    """--tta-views VIEWS (checked here, before any study is opened), else --tta, in one
    spelling per set of views (``trainer.evaluate.tta_key``)."""
    if args.tta_views is None:
        return args.tta
    from trainer.evaluate import tta_key

    return tta_key(args.tta_views)


# the names are trainer.evaluate's list_tta_views() and TTA_SETS (a test checks), written out
# so that building the parser does not import torch
TTA_VIEWS_HELP = (
    "comma-separated test-time views or sets to average over instead, e.g. hflip,vflip "
    "(views: identity, hflip, vflip, rotate_p10, rotate_m10, color, blur, crop_center, "
    "crop_tl, crop_tr, crop_bl, crop_br; sets: seed000 = the 6 of --tta, flips, crops, none)"
)


def _tta_args(p: argparse.ArgumentParser) -> None:
    one = p.add_mutually_exclusive_group()
    one.add_argument(
        "--tta", action="store_true", help="average logits over seed 000's 6 test-time views"
    )
    one.add_argument("--tta-views", metavar="VIEWS", help=TTA_VIEWS_HELP)


def _cmd_ablate(args: argparse.Namespace) -> int:
    from search.experiments.ablate import parse_factor, plan_ablation, run_ablation
    from search.report.progress import Progress
    from search.study.studyfile import load_study

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
    )
    study = run_ablation(plan, progress=Progress(quiet=args.quiet))
    from search.report.export import print_ablation

    print_ablation(study)
    return 0


def _cmd_confirm(args: argparse.Namespace) -> int:
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
    name, storage = _stored(args)
    plan = plan_confirm(
        name,
        storage=storage,
        top=args.top,
        repeats=args.repeats,
        seeds=seeds,
        tta=_tta(args),
        data_root=args.data,
    )
    print_confirm(run_confirm(plan, progress=Progress(quiet=args.quiet)))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from search.report.export import export_study

    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    name, storage = _stored(args)
    written = export_study(name, storage=storage, out_dir=args.out, formats=formats)
    print(f"wrote {len(written)} files to {args.out}", file=sys.stderr)
    return 0


def _cmd_dashboard(args: argparse.Namespace) -> int:
    from search.report.dashboard import launch

    if args.profile and not args.study:
        raise ValueError("--profile needs --study NAME")
    name, storage = _stored(args) if args.study else (None, args.storage)
    return launch(
        study=name,
        storage=storage,
        host=args.host,
        port=args.port,
    )


def _cmd_init(args: argparse.Namespace) -> int:
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


def _stored(args: argparse.Namespace) -> tuple[str, str | None]:
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


def _profile_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--profile",
        metavar="NAME",
        help="the study file's [profiles.NAME] (e.g. quick); its trials are the study NAME.PROFILE",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="search", description="Hyperparameter search and ablation for image classifiers."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def storage_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--storage",
            help="Optuna storage URL (default: $SEARCH_STORAGE, the study file's, "
            "or sqlite:///hpsearch.db in the working directory)",
        )

    p = sub.add_parser("run", help="create or resume a study and run it to N finished trials")
    p.add_argument("--study", required=True, help="study file name (see `search list`)")
    _profile_arg(p)
    p.add_argument(
        "--trials",
        type=int,
        help="finished trials the study should hold (optional with a wall-clock budget)",
    )
    storage_arg(p)
    p.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")
    p.add_argument(
        "--budget",
        metavar="DURATION",
        help="wall-clock budget of this command, e.g. 30m, 2h, 45s or seconds: no trial starts "
        "that cannot finish in the time left, and the running one stops at the deadline",
    )
    p.add_argument(
        "--max-trial-minutes",
        type=float,
        metavar="M",
        help="configurations estimated to take longer are not trained (pruned, over_budget)",
    )
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="fix a parameter")
    p.add_argument(
        "--enqueue",
        action="append",
        metavar="K=V[,K=V...]",
        help="run this configuration first (a known baseline)",
    )
    p.add_argument("--data", help="data root (overrides the study file and its env variable)")
    p.add_argument("-q", "--quiet", action="store_true", help="no per-epoch lines")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes on this machine (one per GPU when there are GPUs); needs "
        "PostgreSQL when > 1. Run the same command on other machines to add theirs",
    )
    p.add_argument(
        "--threads", type=int, help="CPU threads per worker (default: the cores / workers)"
    )
    p.add_argument(
        "--heartbeat",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="a running trial's heartbeat interval (default 30)",
    )
    p.add_argument(
        "--grace",
        type=float,
        metavar="SECONDS",
        help="a trial without heartbeat this long is failed and retried (default 4 heartbeats)",
    )
    p.add_argument(
        "--retries",
        type=int,
        default=2,
        help="times a lost trial's parameters are run again (default 2)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="check everything and print the first 3 configurations; train and write nothing",
    )
    p.add_argument(
        "--force",
        "--force-space",
        dest="force",
        action="store_true",
        help="go on although the study's settings or space changed since it was created "
        "(the change is recorded in the study's note)",
    )
    p.add_argument("--worker-child", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("space", help="the resolved search space of a study, parameter by parameter")
    p.add_argument("--study", required=True, help="study file name (see `search list`)")
    _profile_arg(p)
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="fix a parameter")
    p.set_defaults(func=_cmd_space)

    p = sub.add_parser("best", help="the best trial of a study")
    p.add_argument("--study", required=True)
    _profile_arg(p)
    storage_arg(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_best)

    p = sub.add_parser("list", help="studies in files and in the storage")
    storage_arg(p)
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("evaluate", help="confusion matrix and per-class accuracy of a trial")
    p.add_argument("--study", required=True)
    _profile_arg(p)
    p.add_argument("--trial", type=int, help="trial number (default: the best)")
    storage_arg(p)
    p.add_argument("--data", help="data root, if it moved since the study ran")
    p.add_argument("--out", help="write the confusion matrix as a plotly HTML figure")
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--split",
        choices=("val", "test"),
        default="val",
        help="evaluate on the validation split (default) or the held-out test split",
    )
    _tta_args(p)
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("predict", help="label an unlabeled image folder with a trial's model")
    p.add_argument("--study", required=True)
    _profile_arg(p)
    p.add_argument("--data", required=True, help="folder of unlabeled images")
    p.add_argument("--out", required=True, help="CSV to write (file,label)")
    p.add_argument("--trial", type=int, help="trial number (default: the best)")
    _tta_args(p)
    storage_arg(p)
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("ablate", help="one-factor-at-a-time ablation with repeats")
    p.add_argument("--study", required=True)
    _profile_arg(p)
    p.add_argument(
        "--factor", action="append", metavar="KEY=V1,V2,...", help="a factor and its values"
    )
    p.add_argument("--repeats", type=int, help="runs per value, seeds 0..R-1 (default 3)")
    p.add_argument(
        "--baseline",
        help="best (the study's best trial), defaults (the study's settings), or K=V,K=V",
    )
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="fix a setting")
    storage_arg(p)
    p.add_argument("--data", help="data root (overrides the study file)")
    p.add_argument("-q", "--quiet", action="store_true")
    p.add_argument(
        "--test", action="store_true", help="also evaluate every run on the held-out test split"
    )
    p.set_defaults(func=_cmd_ablate)

    p = sub.add_parser(
        "confirm", help="retrain the top configurations with fresh seeds; report on test"
    )
    p.add_argument("--study", required=True, help="the search study")
    _profile_arg(p)
    p.add_argument(
        "--top", type=int, default=3, help="distinct configurations to confirm (default 3)"
    )
    p.add_argument("--repeats", type=int, help="runs per configuration (default 5)")
    p.add_argument(
        "--seeds", nargs="+", metavar="SEED", help="the seeds to use (default: fresh ones)"
    )
    _tta_args(p)
    storage_arg(p)
    p.add_argument("--data", help="data root, if it moved since the search ran")
    p.add_argument("-q", "--quiet", action="store_true", help="no per-epoch lines")
    p.set_defaults(func=_cmd_confirm)

    p = sub.add_parser("export", help="tables and figures of a study and its ablation")
    p.add_argument("--study", required=True)
    _profile_arg(p)
    p.add_argument("--out", required=True, help="output directory (created)")
    p.add_argument("--format", default="md,csv,tex,html,json", help="comma-separated formats")
    storage_arg(p)
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("init", help="write a study file that fits an image folder and this machine")
    p.add_argument("folder", help="image folder (class subfolders, <label>_<id> files) or manifest")
    p.add_argument("--name", help="study name (default: the folder's name)")
    p.add_argument("--out", help="study file to write (default: studies/NAME.toml)")
    p.add_argument(
        "--budget",
        default="10m",
        help="the wall-clock budget the study is sized for: 10m, 2h, ... (default 10m)",
    )
    p.add_argument("--force", action="store_true", help="overwrite an existing study file")
    p.add_argument(
        "--remeasure", action="store_true", help="probe training speed again, not from the cache"
    )
    p.set_defaults(func=_cmd_init)

    p = sub.add_parser("dashboard", help="open optuna-dashboard on a study's storage")
    p.add_argument("--study", help="study whose storage and artifacts to browse")
    _profile_arg(p)
    storage_arg(p)
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    p.add_argument("--port", type=int, default=8080)
    p.set_defaults(func=_cmd_dashboard)
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
        return EXIT_USAGE
    except Terminated:
        print("\nterminated: the running trial is marked failed; rerun to go on", file=sys.stderr)
        return EXIT_TERMINATED
    except KeyboardInterrupt:
        print("\ninterrupted: the running trial is marked failed; rerun to go on", file=sys.stderr)
        return EXIT_INTERRUPTED
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
