"""Progress of a long job over images: one Rich bar with images/s and time left on a terminal,
and a plain line every ``every`` seconds otherwise, so logs show progress too. A run counts
an image once per (model, method, setting) it explains and scores."""

from __future__ import annotations

import time


class ImageProgress:
    """``with ImageProgress(console, total, "evaluating") as p: p.advance(n, note)``."""

    def __init__(self, console, total: int, label: str, every: float = 5.0) -> None:
        self.console, self.total, self.label, self.every = console, int(total), label, float(every)
        self.done, self._bar, self._task = 0, None, None
        self._start = self._last = time.monotonic()

    def __enter__(self) -> "ImageProgress":
        if self.console is not None and self.console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]} images/s"),
                TimeRemainingColumn(),
                console=self.console,
                transient=True,
            )
            self._bar.__enter__()
            self._task = self._bar.add_task(self.label, total=self.total, rate="-")
        return self

    def advance(self, n: int, note: str = "") -> None:
        self.done += int(n)
        now = time.monotonic()
        rate = self.done / max(now - self._start, 1e-9)
        if self._bar is not None:
            desc = f"{self.label}: {note}" if note else self.label
            self._bar.update(self._task, advance=n, description=desc, rate=f"{rate:.1f}")
        elif self.console is not None and (now - self._last >= self.every or self.done >= self.total):
            self._last = now
            left = (self.total - self.done) / rate if rate > 0 else float("nan")
            self.console.print(
                f"{self.label}: {self.done}/{self.total} images ({rate:.1f} images/s, about {_duration(left)} left)"
            )

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)


def _duration(seconds: float) -> str:
    if seconds != seconds:
        return "?"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
