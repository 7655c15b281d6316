"""Console progress on stderr: a trial line, a bar inside each epoch, a study line per trial.

On a terminal each epoch gets a live tqdm bar (steps, images/s, the epoch's ETA) that gives
way to the epoch's result; elsewhere (logs, tests) every epoch is one plain line and nothing
is redrawn. The study line after each trial shows trials done / wanted or the time left of
the wall-clock budget, the best trial and the study's ETA. ``quiet`` keeps only the study
lines and messages.
"""

from __future__ import annotations

import shutil
import sys
import textwrap
import time
from collections.abc import Iterable
from typing import Any, TextIO

from tqdm import tqdm

from search.study.budget import fmt_duration

FIRST = ("model.backbone", "data.batch_size")  # what a trial costs: shown first, always
PLAIN_WIDTH = 100  # line width when the stream is not a terminal


def _short(key: str) -> str:
    section, _, short = key.rpartition(".")
    return section if short == "name" else short  # optim=adam, loss=ce


def _value(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def fmt_params(params: dict[str, Any], *, pinned: Iterable[str] = ()) -> list[str]:
    """``key=value`` words: backbone and batch size first, then every other parameter the
    trial drew (values pinned for every trial are left out: they never differ)."""
    pinned = set(pinned)
    keys = [k for k in FIRST if k in params]
    keys += [k for k in params if k not in FIRST and k not in pinned]
    return [f"{_short(k)}={_value(params[k])}" for k in keys]


class Progress:
    def __init__(self, stream: TextIO | None = None, *, quiet: bool = False) -> None:
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.tty = self.stream.isatty()
        self.wanted: int | None = 0  # trials the study should hold; None: the wall clock decides
        self.started = time.monotonic()
        self.wall_seconds: float | None = None
        self._first_done: int | None = None  # finished trials at this run's first trial end
        self._ended = 0  # trials this run has finished
        self._open_line = False
        self._bar: tqdm | None = None
        self._bar_key: tuple[int, int] = (-1, -1)
        self._bar_t0, self._bar_images0 = 0.0, 0
        self._last_epoch = ""

    def start(self, *, started: float | None = None, wall_seconds: float | None = None) -> None:
        """The run's clock (``time.monotonic()``) and its wall-clock budget, for the ETA."""
        self.started = time.monotonic() if started is None else started
        self.wall_seconds = wall_seconds

    @property
    def width(self) -> int:
        return shutil.get_terminal_size((PLAIN_WIDTH, 24)).columns if self.tty else PLAIN_WIDTH

    def _print(self, text: str) -> None:
        self._close_bar()
        if self._open_line:
            self.stream.write("\n")
            self._open_line = False
        print(text, file=self.stream, flush=True)

    def message(self, text: str) -> None:
        self._print(text)

    def trial_start(
        self,
        number: int,
        params: dict[str, Any],
        *,
        pinned: Iterable[str] = (),
        estimate: float | None = None,
    ) -> None:
        """``trial N (~2m10s): backbone=... batch_size=... lr=...``, wrapped, never cut."""
        if self.quiet:
            return
        head = f"trial {number}" + (f" (~{fmt_duration(estimate)})" if estimate else "") + ": "
        words = fmt_params(params, pinned=pinned)
        lines = textwrap.wrap(
            " ".join(words),
            width=max(40, self.width - 1),
            initial_indent=head,
            subsequent_indent=" " * len(head),
            break_long_words=False,
            break_on_hyphens=False,
        )
        self._print("\n".join(lines or [head.rstrip()]))
        self._last_epoch = ""

    def step(
        self, number: int, epoch: int, epochs: int, step: int, steps: int, images: int
    ) -> None:
        """After every training step: the live bar, on a terminal only."""
        if self.quiet or not self.tty:
            return
        now = time.monotonic()
        if self._bar is None or self._bar_key != (number, epoch):
            self._close_bar()
            if self._open_line:  # the last epoch's line gives way to the bar
                self.stream.write("\r\033[K")
                self._open_line = False
            self._bar = tqdm(
                total=steps,
                initial=step,
                desc=f"  trial {number} epoch {epoch}/{epochs}",
                unit="step",
                file=self.stream,
                leave=False,
                dynamic_ncols=True,
            )
            self._bar_key, self._bar_t0, self._bar_images0 = (number, epoch), now, images
            return
        if now > self._bar_t0:
            ips = (images - self._bar_images0) / (now - self._bar_t0)
            self._bar.set_postfix_str(f"{ips:,.0f} img/s{self._last_epoch}", refresh=False)
        self._bar.update(step - self._bar.n)

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()  # leave=False: the bar's line is cleared
            self._bar = None

    def epoch(self, number: int, epoch: int, epochs: int, m: dict[str, float]) -> None:
        if self.quiet:
            return
        line = (
            f"  trial {number} epoch {epoch}/{epochs}  train_loss {m['train_loss']:.4f}  "
            f"train_acc {m['train_acc']:.4f}  val_acc {m['val_acc']:.4f}  {m['seconds']:.1f}s"
        )
        self._last_epoch = f", val_acc {m['val_acc']:.4f} after epoch {epoch}"
        if self.tty:
            self._close_bar()
            self.stream.write("\r\033[K" + line)
            self.stream.flush()
            self._open_line = True
        else:
            self._print(line)

    def trial_end(self, finished: int, text: str, best: str) -> None:
        """``[####......] 5/20 trial 4 complete ... | best ... | 12m left of 30m, ETA 8m``."""
        self._ended += 1
        if self._first_done is None:
            self._first_done = finished - 1
        now = time.monotonic()
        elapsed = now - self.started
        left = None if self.wall_seconds is None else max(0.0, self.wall_seconds - elapsed)
        eta = None
        if self.wanted:
            remaining = max(0, self.wanted - finished)
            eta = elapsed / max(1, finished - self._first_done) * remaining
            count = f"{finished}/{self.wanted}"
            fraction = finished / self.wanted
        else:
            count = f"{finished} done"
            fraction = 0.0
        if left is not None:
            eta = left if eta is None else min(eta, left)
            fraction = max(fraction, elapsed / self.wall_seconds)
        bar_w = 20
        filled = min(bar_w, round(bar_w * fraction))
        bar = "#" * filled + "." * (bar_w - filled)
        tail = ""
        if left is not None:
            tail += f" | {fmt_duration(left)} left of {fmt_duration(self.wall_seconds)}"
        if eta is not None and (self.wanted is None or finished < self.wanted):
            tail += f" | ETA {fmt_duration(eta)}"
        self._print(f"[{bar}] {count} {text}" + (f" | best {best}" if best else "") + tail)
