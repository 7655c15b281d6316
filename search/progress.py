"""Console progress: a study-level line per trial and a per-epoch line, on stderr."""

from __future__ import annotations

import sys
from typing import Any, TextIO


def fmt_params(params: dict[str, Any], limit: int = 8) -> str:
    parts = []
    for key, value in list(params.items())[:limit]:
        section, _, short = key.rpartition(".")
        short = section if short == "name" else short  # optim=adam, loss=ce
        parts.append(f"{short}={value:.3g}" if isinstance(value, float) else f"{short}={value}")
    return " ".join(parts) + (" ..." if len(params) > limit else "")


class Progress:
    def __init__(self, stream: TextIO | None = None, *, quiet: bool = False) -> None:
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.tty = self.stream.isatty()
        self.wanted = 0
        self._open_line = False

    def _print(self, text: str) -> None:
        if self._open_line:
            self.stream.write("\n")
            self._open_line = False
        print(text, file=self.stream, flush=True)

    def message(self, text: str) -> None:
        self._print(text)

    def trial_start(self, number: int, params: dict[str, Any]) -> None:
        if not self.quiet:
            self._print(f"trial {number}: {fmt_params(params)}")

    def epoch(self, number: int, epoch: int, epochs: int, m: dict[str, float]) -> None:
        if self.quiet:
            return
        line = (
            f"  trial {number} epoch {epoch}/{epochs}  train_loss {m['train_loss']:.4f}  "
            f"train_acc {m['train_acc']:.4f}  val_acc {m['val_acc']:.4f}  {m['seconds']:.1f}s"
        )
        if self.tty:
            self.stream.write("\r\033[K" + line)
            self.stream.flush()
            self._open_line = True
        else:
            self._print(line)

    def trial_end(self, finished: int, text: str, best: str) -> None:
        bar_w = 20
        filled = min(bar_w, round(bar_w * finished / max(self.wanted, 1)))
        bar = "#" * filled + "." * (bar_w - filled)
        self._print(
            f"[{bar}] {finished}/{self.wanted} {text}" + (f" | best {best}" if best else "")
        )
