"""Console progress: the trial line (cost first, wrapped, never cut), a live bar inside each
epoch on a terminal only, and the study line with trials or budget left and an ETA."""

from __future__ import annotations

import io
import re

from search.report.progress import PLAIN_WIDTH, Progress

PARAMS = {
    "data.batch_size": 32,
    "optim.name": "sam_sgd",
    "optim.lr": 0.00312345,
    "optim.weight_decay": 1.5e-5,
    "optim.momentum": 0.9,
    "optim.nesterov": True,
    "optim.rho": 0.05,
    "model.dropout": 0.25,
    "loss.name": "ls_focal",
    "loss.smoothing": 0.1,
    "loss.gamma": 2.0,
    "sched.name": "cosine",
    "model.strategy": "partial",
    "model.freeze_stages": 2,
    "model.backbone": "efficientnet_b0",
}
METRICS = {"train_loss": 0.5, "train_acc": 0.8, "val_acc": 0.75, "seconds": 1.2}


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_trial_line_puts_backbone_and_batch_size_first_and_wraps_without_cutting():
    out = io.StringIO()
    Progress(out).trial_start(7, PARAMS, estimate=130.0)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("trial 7 (~2m10s): backbone=efficientnet_b0 batch_size=32 ")
    assert len(lines) >= 2 and all(len(line) <= PLAIN_WIDTH for line in lines)
    indent = len("trial 7 (~2m10s): ")
    assert all(line.startswith(" " * indent) and line[indent] != " " for line in lines[1:])
    text = " ".join(line.strip() for line in lines)
    assert "..." not in text
    for word in ("optim=sam_sgd", "lr=0.00312", "rho=0.05", "gamma=2", "freeze_stages=2"):
        assert word in text  # every drawn parameter is shown


def test_parameters_pinned_for_every_trial_are_left_out_except_the_cost_ones():
    out = io.StringIO()
    pinned = {"model.backbone": "small_cnn", "data.batch_size": 128, "optim.name": "adam"}
    Progress(out).trial_start(0, {**pinned, "optim.lr": 0.01}, pinned=pinned)
    assert out.getvalue() == "trial 0: backbone=small_cnn batch_size=128 lr=0.01\n"


def test_off_a_terminal_epochs_are_plain_lines_and_steps_draw_nothing():
    out = io.StringIO()
    p = Progress(out)
    p.wanted = 1
    p.trial_start(0, {"optim.lr": 0.01})
    for step in range(1, 6):
        p.step(0, 1, 3, step, 5, 64 * step)
    p.epoch(0, 1, 3, METRICS)
    p.trial_end(1, "trial 0 complete", "0.7500 (trial 0)")
    text = out.getvalue()
    assert "\r" not in text and "\x1b" not in text
    assert text.splitlines() == [
        "trial 0: lr=0.01",
        "  trial 0 epoch 1/3  train_loss 0.5000  train_acc 0.8000  val_acc 0.7500  1.2s",
        "[####################] 1/1 trial 0 complete | best 0.7500 (trial 0)",
    ]


def test_on_a_terminal_each_epoch_has_a_live_bar_with_steps_and_images_per_second():
    out = Terminal()
    p = Progress(out)
    p.trial_start(3, {"model.backbone": "resnet18"})
    for step in range(1, 11):
        p.step(3, 2, 12, step, 10, 32 * step)
    drawn = out.getvalue()
    assert "trial 3 epoch 2/12" in drawn and "/10" in drawn and "step" in drawn
    p.epoch(3, 2, 12, METRICS)
    after = out.getvalue()[len(drawn) :]
    assert "val_acc 0.7500" in after
    # the next epoch's bar carries the last epoch's result and the images/s
    for step in range(1, 4):
        p.step(3, 3, 12, step, 10, 32 * step)
    p._bar.refresh()
    assert "img/s, val_acc 0.7500 after epoch 2" in out.getvalue()


def test_quiet_shows_only_the_study_lines():
    out = Terminal()
    p = Progress(out, quiet=True)
    p.wanted = 4
    p.trial_start(0, PARAMS)
    p.step(0, 1, 3, 1, 5, 64)
    p.epoch(0, 1, 3, METRICS)
    p.trial_end(1, "trial 0 complete val_acc 0.7500", "0.7500 (trial 0)")
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("[#####...............] 1/4 trial 0 complete")


def test_study_line_shows_trials_wanted_and_the_study_eta():
    out = io.StringIO()
    p = Progress(out)
    p.wanted = 4
    p.start()
    p.trial_end(1, "trial 0 complete", "0.9 (trial 0)")
    p.trial_end(4, "trial 3 complete", "0.9 (trial 0)")
    first, last = out.getvalue().splitlines()
    assert first.startswith("[#####...............] 1/4 trial 0 complete | best 0.9 (trial 0)")
    assert "| ETA " in first
    assert last.startswith("[####################] 4/4") and "ETA" not in last  # all done


def test_study_line_shows_the_time_left_of_the_budget():
    out = io.StringIO()
    p = Progress(out)
    p.wanted = None  # the budget alone ends the run
    p.start(wall_seconds=1800.0)
    p.trial_end(5, "trial 4 pruned: pruned after epoch 2", "0.9 (trial 1)")
    line = out.getvalue().strip()
    assert line.startswith("[....................] 5 done trial 4 pruned")
    assert re.search(r" \| (30m00s|29m\d\ds) left of 30m00s \| ETA (30m00s|29m\d\ds)$", line)
