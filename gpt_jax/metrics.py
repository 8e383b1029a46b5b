"""Metrics out of a run: JSONL rows + TensorBoard scalars, and the per-stage summary.json.

`<stage_dir>/metrics.jsonl` holds one JSON object per logged step (`step`, `loss`, ...; eval rows
carry `eval_loss`). On resume, rows past the restored step (all rows when no checkpoint was
reached) and a torn last line are dropped first, so the file reads as one uninterrupted run. `<stage_dir>/summary.json` is written once, when the stage completes;
its keys are documented in docs/configs_and_presets.md (and per stage in docs/) and read by later
stages and the report.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np


def _jsonable(value):
    if isinstance(value, (np.generic,)):
        value = value.item()
    if hasattr(value, "shape") and getattr(value, "shape", None) == ():
        value = float(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _primary() -> bool:
    """Process 0 of a multi-process run (and every single-process run) writes the run's files."""
    from gpt_jax.multihost import is_primary

    return is_primary()


class MetricsWriter:
    """Appends metric rows to metrics.jsonl and (optionally) TensorBoard. In a multi-process run
    only process 0 writes (every process holds the same, global, metric values)."""

    def __init__(self, stage_dir: str | os.PathLike, tensorboard: bool = True):
        self.dir = Path(stage_dir)
        self.path = self.dir / "metrics.jsonl"
        self._tb = None
        self.enabled = _primary()
        if not self.enabled:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(self.dir / "tensorboard"))

    def truncate_after(self, step: int) -> None:
        """Drops rows logged after `step` (they belong to work that a resume will redo)."""
        if self.enabled:
            truncate_jsonl(self.path, step)

    def write(self, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {"step": int(step), **{k: _jsonable(v) for k, v in values.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self._tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def truncate_jsonl(path: str | os.PathLike, step: int) -> None:
    """Keeps the rows of a JSONL file whose "step" is <= `step` (atomically; no file: no-op)."""
    path = Path(path)
    if not path.exists():
        return
    write_jsonl(path, [r for r in read_metrics(path) if r.get("step", 0) <= step])


def write_jsonl(path: str | os.PathLike, rows) -> None:
    """One JSON object per line, written atomically (a temp file renamed over `path`)."""
    path = Path(path)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    os.replace(tmp, path)


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The rows of a JSONL file. A torn last line (no newline, not valid JSON: a process killed
    mid-write) is dropped; any other unreadable line raises ValueError naming file:line."""
    with open(path) as f:
        lines = f.readlines()
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            if number == len(lines) and not line.endswith("\n"):
                break  # torn by a kill mid-write; a resume rewrites the file without it
            raise ValueError(f"{path}:{number}: not a JSON row ({e}): {line[:200]!r}") from e
    return rows


def write_summary(stage_dir: str | os.PathLike, summary: dict[str, Any]) -> Path:
    """Atomically writes <stage_dir>/summary.json; its presence marks the stage complete.
    In a multi-process run only process 0 writes it."""
    path = Path(stage_dir) / "summary.json"
    if not _primary():
        return path
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({k: _jsonable(v) for k, v in summary.items()}, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def save_stage_config(stage_dir: str | os.PathLike, config) -> Path:
    """Creates <stage_dir> and saves the stage's full config as config.json (later stages and
    `checkpoint.load_stage` read the model section from it)."""
    stage_dir = Path(stage_dir)
    stage_dir.mkdir(parents=True, exist_ok=True)
    path = stage_dir / "config.json"
    path.write_text(config.to_json_best_effort(indent=2))
    return path


def read_summary(stage_dir: str | os.PathLike) -> dict[str, Any] | None:
    path = Path(stage_dir) / "summary.json"
    return json.loads(path.read_text()) if path.exists() else None
