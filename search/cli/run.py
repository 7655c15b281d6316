"""``search run``, and the command line of a worker process it starts (``child_argv``)."""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

from search.cli.command import Command, add_storage, add_study
from search.study.values import parse_assignments


def _absolute(path: str) -> str:
    # a worker may run in another directory than the one the user typed the path in
    return str(Path(path).expanduser().resolve())


class Run(Command):
    help = "create or resume a study and run it to N finished trials"

    def __init__(self) -> None:
        # the options a worker process is given as the user gave them, in the order declared,
        # each with how its value is written on the worker's command line (child_argv)
        self.passed_on: list[tuple[argparse.Action, Callable[[Any], str]]] = []

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        def option(
            *flags: str, worker: bool, as_text: Callable[[Any], str] = str, **kwargs: Any
        ) -> None:
            action = parser.add_argument(*flags, **kwargs)
            if worker:
                self.passed_on.append((action, as_text))

        study, profile = add_study(parser, help="study file name (see `search list`)")
        self.passed_on += [(study, str), (profile, str)]
        option(
            "--trials",
            worker=True,
            type=int,
            help="finished trials the study should hold (optional with a wall-clock budget)",
        )
        add_storage(parser)  # never passed on: the URL travels in the environment, not in `ps`
        option(
            "--timeout",
            worker=True,
            type=float,
            help="stop starting trials after this many seconds",
        )
        option(
            "--budget",
            worker=True,
            metavar="DURATION",
            help="wall-clock budget of this command, e.g. 30m, 2h, 45s or seconds: no trial "
            "starts that cannot finish in the time left, and the running one stops at the deadline",
        )
        option(
            "--max-trial-minutes",
            worker=True,
            type=float,
            metavar="M",
            help="configurations estimated to take longer are not trained (pruned, over_budget)",
        )
        option("--set", worker=True, action="append", metavar="KEY=VALUE", help="fix a parameter")
        option(
            "--enqueue",
            worker=True,
            action="append",
            metavar="K=V[,K=V...]",
            help="run this configuration first (a known baseline)",
        )
        option(
            "--data",
            worker=True,
            as_text=_absolute,
            help="data root (overrides the study file and its env variable)",
        )
        option("-q", "--quiet", worker=True, action="store_true", help="no per-epoch lines")
        option(
            "--workers",
            worker=False,  # a worker is one process
            type=int,
            default=1,
            help="worker processes on this machine (one per GPU when there are GPUs); needs "
            "PostgreSQL when > 1. Run the same command on other machines to add theirs",
        )
        option(
            "--ray",
            worker=False,  # the workers it starts are the Ray tasks
            metavar="ADDRESS",
            help="run the trials as Ray work: auto, HOST:PORT, ray://HOST:PORT, or local (a "
            "private Ray on this machine); needs PostgreSQL and pip install 'hpsearch[ray]'",
        )
        option(
            "--gpus-per-trial",
            worker=False,
            type=float,
            metavar="G",
            help="with --ray: the share of a GPU each trial asks for (1, 0.5, 0.25, ...: 1/G "
            "trials share a GPU; default 1 where the cluster has GPUs)",
        )
        option(
            "--cpus-per-trial",
            worker=False,
            type=float,
            metavar="C",
            help="with --ray: the CPUs each trial asks for (default 1)",
        )
        option(
            "--artifacts",
            worker=False,  # given to every worker as SEARCH_ARTIFACTS
            metavar="DIR",
            help="where checkpoints and resume states go: a folder, or s3://BUCKET/PREFIX "
            "(default: $SEARCH_ARTIFACTS, else beside the SQLite file, else "
            "./hpsearch-artifacts); with --ray, a folder every node mounts, or S3",
        )
        option(
            "--threads",
            worker=True,  # each worker is given its share (child_argv's threads)
            type=int,
            help="CPU threads per worker (default: the cores / workers)",
        )
        option(
            "--heartbeat",
            worker=True,
            type=float,
            default=30.0,
            metavar="SECONDS",
            help="a running trial's heartbeat interval (default 30)",
        )
        option(
            "--grace",
            worker=True,
            type=float,
            metavar="SECONDS",
            help="a trial without heartbeat this long is failed and retried (default 4 heartbeats)",
        )
        option(
            "--retries",
            worker=True,
            type=int,
            default=2,
            help="times a lost trial's parameters are run again (default 2)",
        )
        option(
            "--dry-run",
            worker=False,  # the launcher never starts workers on a dry run
            action="store_true",
            help="check everything and print the first 3 configurations; train and write nothing",
        )
        option(
            "--force",
            "--force-space",
            worker=False,  # the launcher records the change before any worker starts
            dest="force",
            action="store_true",
            help="go on although the study's settings or space changed since it was created "
            "(the change is recorded in the study's note)",
        )
        option("--worker-child", worker=False, action="store_true", help=argparse.SUPPRESS)

    @staticmethod
    def _check_cheap(args: argparse.Namespace):
        """The checks that need no data, model or database, first; the Ray options, or None.
        ``--artifacts`` becomes ``$SEARCH_ARTIFACTS`` here, for this process and its workers."""
        if args.trials is not None and args.trials < 1:
            raise ValueError(f"--trials must be >= 1, but got {args.trials}")
        if args.workers < 1:
            raise ValueError(f"--workers must be >= 1, but got {args.workers}")
        if args.timeout is not None and not args.timeout > 0:
            raise ValueError(f"--timeout must be > 0 seconds, but got {args.timeout}")
        import os

        from search.store import artifacts

        if args.artifacts:
            given = args.artifacts
            os.environ["SEARCH_ARTIFACTS"] = (
                given if artifacts.is_remote(given) else _absolute(given)
            )
        remote = os.environ.get("SEARCH_ARTIFACTS")
        if artifacts.is_remote(remote) and not args.worker_child:
            artifacts.check_bucket(remote)  # missing, or refusing writes: nothing is written
        if args.ray is None:
            for flag in ("gpus_per_trial", "cpus_per_trial"):
                if getattr(args, flag) is not None:
                    raise ValueError(
                        f"--{flag.replace('_', '-')} is a Ray option: add --ray ADDRESS "
                        "(--ray local for a private Ray on this machine)"
                    )
            return None
        if args.workers > 1:
            raise ValueError("--ray and --workers exclude each other: Ray decides how many "
                             "trials run at once (--gpus-per-trial, --cpus-per-trial)")  # fmt: skip
        from search.experiments.ray_launcher import RayOptions

        return RayOptions(
            args.ray,
            gpus_per_trial=args.gpus_per_trial,
            cpus_per_trial=args.cpus_per_trial if args.cpus_per_trial is not None else 1.0,
        )

    def worker_argv(self, args: argparse.Namespace, *, threads: int, **overrides: Any) -> list[str]:
        """The ``search run`` command line of a worker process: the passed-on options the user
        gave, ``--data`` made absolute, ``--worker-child``, and ``--threads`` (with any other
        ``overrides`` of a passed-on option's value, by its dest)."""
        values = {action.dest: getattr(args, action.dest, None) for action, _ in self.passed_on}
        unknown = set(overrides) - set(values)
        if unknown:
            raise TypeError(
                f"worker_argv overrides only options a worker is given ({', '.join(values)}), "
                f"but got {sorted(unknown)}"
            )
        values.update(overrides, threads=threads)
        argv = ["run", "--worker-child"]
        for action, as_text in self.passed_on:
            value = values[action.dest]
            if value is None or value is False or value == "":
                continue  # not given
            flag = next(s for s in action.option_strings if s.startswith("--"))
            if action.nargs == 0:  # a switch
                argv.append(flag)
            elif isinstance(value, list):  # given more than once (action="append")
                for item in value:
                    argv += [flag, as_text(item)]
            else:
                argv += [flag, as_text(value)]
        return argv

    def take_action(self, args: argparse.Namespace) -> int:
        import time

        started = time.monotonic()  # the wall-clock budget counts from here
        from search.experiments.run import plan_run, run_study
        from search.report.summary import print_summary
        from search.store.workers import WorkerOptions
        from search.study.budget import resolve_run_limits
        from search.study.samplers import grid_trials
        from search.study.studyfile import load_study

        options = WorkerOptions(
            heartbeat=args.heartbeat, grace=args.grace, max_retries=args.retries
        )
        if args.threads is not None and args.threads < 1:
            raise ValueError(f"--threads must be >= 1, but got {args.threads}")
        spec = load_study(args.study, profile=args.profile)
        args.trials = grid_trials(spec.sampler, args.trials)  # workers get it too
        limits = resolve_run_limits(
            spec.budget,
            where=str(spec.path),
            wall=args.budget,
            max_trial_minutes=args.max_trial_minutes,
        )
        if args.trials is None and limits.wall_seconds is None:
            raise ValueError(
                "--trials N is needed unless a wall-clock budget is given "
                "(--budget 30m, or budget.wall in the study file)"
            )
        ray = self._check_cheap(args)  # before any data is read or model built
        if ray is not None:
            from search.experiments.ray_launcher import check_address, check_storage
            from search.store import Storage

            check_storage(Storage.open(args.storage, study_url=spec.storage))
            check_address(ray)
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
        from search.report.progress import Progress
        from search.store import storage as storage_mod

        storage_mod.check_workers(plan.storage, args.workers)
        if args.workers > 1 or ray is not None:
            from search.experiments.launcher import run_workers

            return run_workers(
                plan,
                ray=ray,
                workers=args.workers,
                trials=args.trials,
                timeout=args.timeout,
                limits=limits,
                started=started,
                threads=args.threads,
                worker_argv=functools.partial(self.worker_argv, args),
            )
        if args.worker_child:
            import os

            from search.experiments.launcher import watch_parent
            from search.store.workers import GPU_SHARE_ENV

            watch_parent()
            if os.environ.get(GPU_SHARE_ENV):  # several trials share this GPU (--ray)
                import trainer

                trainer.set_gpu_share(float(os.environ[GPU_SHARE_ENV]))
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
            limits=limits,
            started=started,
        )
        if not args.worker_child:
            print_summary(study, plan.storage)
        return 0


def child_argv(args: argparse.Namespace, *, threads: int, **overrides: Any) -> list[str]:
    """The ``search run`` command line of a worker process, from ``search run``'s parsed
    ``args`` (``Run.worker_argv``). The storage URL travels in the environment, never on a
    command line that ``ps`` shows to every user."""
    command = Run()
    command.add_arguments(argparse.ArgumentParser(add_help=False))
    return command.worker_argv(args, threads=threads, **overrides)
