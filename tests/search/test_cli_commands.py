"""The command registry and a worker's command line, derived from ``search run``'s options."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from conftest import TINY_DIGITS

from search.cli import main
from search.cli.main import COMMANDS, build_parser
from search.cli.run import Run, child_argv

# every `search run` option a worker gets, as the user typed it (the storage URL is not one)
FULL_RUN = [
    "run", "--study", "tiny", "--profile", "quick", "--trials", "7", "--timeout", "60",
    "--budget", "30m", "--max-trial-minutes", "2.5", "--set", "optim.lr=0.01",
    "--set", "model.dropout=0.1", "--enqueue", "train.batch_size=32,optim.lr=0.001",
    "--data", "some/folder", "-q", "--threads", "8", "--heartbeat", "5", "--grace", "12",
    "--retries", "0", "--storage", "sqlite:///secret.db", "--workers", "3", "--force",
]  # fmt: skip
NOT_PASSED_ON = {"storage", "workers", "dry_run", "force", "worker_child"}


def test_the_parser_has_one_subcommand_per_registered_command_in_order():
    help_text = " ".join(build_parser().format_help().split())
    at = [
        help_text.index(f" {name} {command_type.help}") for name, command_type in COMMANDS.items()
    ]
    assert at == sorted(at)
    assert all(command_type.help for command_type in COMMANDS.values())


def test_a_worker_parses_what_the_launcher_parsed_except_its_own_options():
    parser = build_parser()
    args = parser.parse_args(FULL_RUN)
    argv = child_argv(args, threads=2)
    child = parser.parse_args(argv)
    assert child.worker_child and child.threads == 2
    assert child.data == str(Path("some/folder").resolve())
    assert child.retries == 0  # a falsy value the user gave is still passed on
    assert child.storage is None and "sqlite:///secret.db" not in argv
    assert child.workers == 1 and not child.force
    skip = NOT_PASSED_ON | {"threads", "data", "func"}
    for dest, value in vars(args).items():
        if dest not in skip:
            assert getattr(child, dest) == value, dest


def test_the_storage_and_the_launchers_own_options_are_never_passed_on():
    # every run option says whether it is (option(..., worker=) has no default); these say no
    command, parser = Run(), argparse.ArgumentParser()
    command.add_arguments(parser)
    passed = {action.dest for action, _ in command.passed_on}
    assert passed <= set(vars(parser.parse_args(["--study", "x"])))
    assert not passed & NOT_PASSED_ON


def test_options_the_user_did_not_give_stay_off_a_workers_command_line():
    args = build_parser().parse_args(["run", "--study", "tiny", "--trials", "2"])
    argv = child_argv(args, threads=1)
    for flag in ("--profile", "--timeout", "--budget", "--set", "--data", "--quiet", "--grace"):
        assert flag not in argv
    assert argv[argv.index("--heartbeat") + 1] == "30.0"  # defaults go on, as before


def test_the_launcher_overrides_a_passed_on_value_and_refuses_other_names():
    args = build_parser().parse_args(["run", "--study", "tiny", "--budget", "2h"])
    argv = child_argv(args, threads=1, budget="12.5")
    assert argv[argv.index("--budget") + 1] == "12.5"
    with pytest.raises(TypeError, match="storage"):
        child_argv(args, threads=1, storage="sqlite:///x.db")


def test_workers_get_what_is_left_of_the_wall_clock_and_their_share_of_threads(
    write_study, storage_url, monkeypatch
):
    write_study("tiny", TINY_DIGITS)
    seen: dict = {}

    def launch(argv, *, storage, workers, threads, stream=None):
        seen.update(argv=argv, url=storage.url, workers=workers, threads=threads)
        return 0

    monkeypatch.setattr("search.experiments.launcher.launch", launch)
    # SQLite refuses several workers; this test stops where the workers would start
    monkeypatch.setattr("search.store.storage.check_workers", lambda storage, workers: None)
    run = ["run", "--study", "tiny", "--budget", "1h", "--workers", "2", "--threads", "3", "-q"]
    assert main([*run, "--storage", storage_url]) == 0
    argv = seen["argv"]
    assert 3000 < float(argv[argv.index("--budget") + 1]) <= 3600
    assert argv[argv.index("--threads") + 1] == "3" and seen["threads"] == 3
    assert seen["workers"] == 2 and "--workers" not in argv
    assert "--storage" not in argv and seen["url"].endswith(storage_url.split("///")[-1])
