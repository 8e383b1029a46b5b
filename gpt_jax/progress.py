"""Progress output for every long loop (training steps, PPO steps, tokenizing shards).

`progress(...)` returns a tqdm bar when stderr is a terminal, and otherwise (CI, pipes, benchmark
logs) a plain line writer with the same small interface (iteration, `update`, `set_postfix`,
`close`): no carriage returns, one line per `set_postfix` call, which the training loops make once
per log step ("pretrain step 20/300 loss=4.1234 tok_s=2,416 mfu=0.48"). GPT_JAX_PROGRESS=bar|lines|off
overrides the choice; a caller's `enabled=False` (e.g. `train.progress_bar=False`) means off.
"""
from __future__ import annotations

import os
import sys
import time

MODES = ("bar", "lines", "off")


def progress_mode() -> str:
    """bar | lines | off: GPT_JAX_PROGRESS when set, else bar on a TTY stderr, lines otherwise."""
    env = os.environ.get("GPT_JAX_PROGRESS", "").strip().lower()
    if env:
        if env not in MODES:
            raise ValueError(f"GPT_JAX_PROGRESS={env!r}; expected one of {MODES}")
        return env
    isatty = getattr(sys.stderr, "isatty", None)
    return "bar" if isatty is not None and isatty() else "lines"


class LineProgress:
    """The non-interactive stand-in for a tqdm bar: one plain line per `set_postfix` (at most
    one per `min_interval` seconds), plus a last line at `close` when `final_line`."""

    def __init__(self, iterable=None, total=None, initial: int = 0, desc: str = "",
                 quiet: bool = False, min_interval: float = 0.0, final_line: bool = False,
                 unit: str = "step"):
        self.iterable, self.total, self.n, self.desc = iterable, total, initial, desc
        self.quiet, self.min_interval, self.final_line, self.unit = quiet, min_interval, \
            final_line, unit
        self._last_print = -float("inf")
        self._postfix = ""
        self._t0 = time.perf_counter()

    def __iter__(self):
        for item in self.iterable:
            self.n += 1  # numbered as the step the body is running (tqdm counts after it)
            yield item

    def update(self, n: int = 1) -> None:
        self.n += n

    def _print(self) -> None:
        if self.quiet:
            return
        total = f"/{self.total}" if self.total is not None else ""
        line = f"{self.desc} {self.unit} {self.n}{total}"
        if self._postfix:
            line += f" {self._postfix}"
        print(line, file=sys.stderr, flush=True)
        self._last_print = time.perf_counter()

    def set_postfix(self, **values) -> None:
        self._postfix = " ".join(f"{k}={v}" for k, v in values.items())
        if time.perf_counter() - self._last_print >= self.min_interval:
            self._print()

    def close(self) -> None:
        if self.final_line:
            self._postfix = (f"{self._postfix} " if self._postfix else "") + \
                f"({time.perf_counter() - self._t0:.1f}s)"
            self._print()
            self.final_line = False


def progress(iterable=None, *, total=None, initial: int = 0, desc: str = "",
             enabled: bool = True, unit: str = "step", leave: bool = True,
             min_interval: float = 0.0, final_line: bool = False):
    """A tqdm bar (TTY) or a LineProgress (lines / off), per `progress_mode()`."""
    mode = progress_mode() if enabled else "off"
    if mode == "bar":
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, initial=initial, desc=desc, dynamic_ncols=True,
                    unit="it" if unit == "step" else unit, leave=leave)
    return LineProgress(iterable, total=total, initial=initial, desc=desc, quiet=mode == "off",
                        min_interval=min_interval, final_line=final_line, unit=unit)
