"""Reading a run's files and formatting report cells: `RunFiles` (tolerant, cached access to a
workdir's summary.json / metrics.jsonl / config.json / samples.jsonl) and the Markdown helpers
`get`, `fmt`, `table`, `image`, `escape_cell`.

Why its own module: every report section (gpt_jax/report/card.py, sections_train.py,
sections_rlhf.py) and the notebooks (gpt_jax/notebook_utils.py) read runs and format numbers the
same way, so "n/a" for an absent key and the number formats are defined once, here.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

STAGE_ORDER = ("tokenizer", "pretrain", "sft", "reward", "ppo", "bon", "feedme", "compare",
               "moderation", "memory")
COMPARE_MODELS = ("base", "sft", "ppo", "feedme")
SIDE_BY_SIDE_PROMPTS = 4
ANSWER_CHARS = 160


# -- reading a workdir ---------------------------------------------------------------------------
class RunFiles:
    """Lazy, tolerant access to a workdir's files: a missing or unreadable file reads as None/[]."""

    def __init__(self, workdir: str | Path):
        self.workdir = Path(workdir)
        self._cache: dict[tuple, Any] = {}

    def _json(self, path: Path):
        key = ("json", path)
        if key not in self._cache:
            try:
                self._cache[key] = json.loads(path.read_text())
            except (OSError, ValueError):
                self._cache[key] = None
        return self._cache[key]

    def _jsonl(self, path: Path) -> list[dict]:
        key = ("jsonl", path)
        if key not in self._cache:
            rows = []
            try:
                for line in path.read_text().splitlines():
                    try:
                        row = json.loads(line)
                    except ValueError:
                        continue  # a line being written right now
                    if isinstance(row, dict):
                        rows.append(row)
            except OSError:
                pass
            self._cache[key] = rows
        return self._cache[key]

    def summary(self, stage: str) -> dict | None:
        value = self._json(self.workdir / stage / "summary.json")
        return value if isinstance(value, dict) else None

    def metrics(self, stage: str) -> list[dict]:
        return self._jsonl(self.workdir / stage / "metrics.jsonl")

    def config(self, stage: str) -> dict | None:
        value = self._json(self.workdir / stage / "config.json")
        return value if isinstance(value, dict) else None

    def samples(self, stage: str) -> list[dict]:
        return self._jsonl(self.workdir / stage / "samples.jsonl")

    def recipe_summary(self) -> dict | None:
        value = self._json(self.workdir / "recipe_summary.json")
        return value if isinstance(value, dict) else None


# -- formatting ----------------------------------------------------------------------------------
def get(tree, path: str, default=None):
    """tree["a"]["b"] for path "a.b"; `default` when any level is missing or not a dict."""
    for key in path.split("."):
        if not isinstance(tree, dict) or key not in tree:
            return default
        tree = tree[key]
    return tree


def fmt(value, digits: int = 4) -> str:
    """Numbers with `digits` decimals (digits=0: thousands separators), bools yes/no, None n/a."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:,.0f}" if digits == 0 else f"{value:.{digits}f}"
    if isinstance(value, dict):
        return " ".join(f"{k}={fmt(v)}" for k, v in value.items())
    return str(value)


def table(header: list[str], rows: list[list]) -> list[str]:
    """Markdown table lines; cells already strings or formatted with `fmt`."""
    cell = lambda v: v if isinstance(v, str) else fmt(v)  # noqa: E731
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return out


def image(path: Path | None, alt: str, workdir: Path) -> list[str]:
    return [f"![{alt}]({path.relative_to(workdir).as_posix()})", ""] if path else []


def escape_cell(text: str, limit: int = ANSWER_CHARS) -> str:
    text = text if len(text) <= limit else text[:limit] + "…"
    return text.replace("|", "\\|").replace("\n", "<br>") or "(empty)"
