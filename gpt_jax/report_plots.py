"""The report's figures (matplotlib, Agg backend: no display needed), one PNG per function.

Each function takes already-loaded rows (the dicts of a stage's metrics.jsonl or summary) and
returns the written path, or None when the rows hold nothing to plot, so a partial run simply
has fewer figures.
"""
from __future__ import annotations

import math
from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def series(rows: list[dict], x: str, y: str) -> tuple[list, list]:
    """(xs, ys) over the rows where both keys hold finite numbers."""
    pts = [(r[x], r[y]) for r in rows if _finite(r.get(x)) and _finite(r.get(y))]
    return [p[0] for p in pts], [p[1] for p in pts]


def _save(fig, plt, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_lines(path: Path, rows: list[dict], x: str, ys: dict[str, str], title: str,
               xlabel: str, ylabel: str, marker: str = "") -> Path | None:
    """One line per `ys` entry ({metrics key: legend label}) against `x`."""
    lines = {label: series(rows, x, key) for key, label in ys.items()}
    lines = {label: xy for label, xy in lines.items() if xy[0]}
    if not lines:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for label, (xs, vals) in lines.items():
        few = len(xs) < 12  # sparse series (eval rows) would not show as bare lines
        ax.plot(xs, vals, marker=marker or ("o" if few else None), label=label)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, plt, path)


def plot_loss_curves(path: Path, rows: list[dict], title: str) -> Path | None:
    """Train loss ("loss" rows) and eval loss ("eval_loss" rows) against the step."""
    return plot_lines(path, rows, "step", {"loss": "train", "eval_loss": "eval"}, title,
                      "step", "loss (nats/token)")


def plot_bars(path: Path, groups: dict[str, dict[str, float]], title: str,
              ylabel: str, figsize: tuple[float, float] = (6, 3.6)) -> Path | None:
    """Grouped bars: {group (e.g. model): {metric: value}}; missing/None values are left out."""
    groups = {g: {k: v for k, v in m.items() if _finite(v)} for g, m in groups.items()}
    groups = {g: m for g, m in groups.items() if m}
    if not groups:
        return None
    metrics = list(dict.fromkeys(k for m in groups.values() for k in m))  # first-seen order
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=figsize)
    width = 0.8 / max(len(metrics), 1)
    for j, metric in enumerate(metrics):
        xs = [i + j * width for i in range(len(groups))]
        ax.bar(xs, [m.get(metric, 0.0) for m in groups.values()], width, label=metric)
    ax.set_xticks([i + width * (len(metrics) - 1) / 2 for i in range(len(groups))],
                  list(groups))
    ax.set(title=title, ylabel=ylabel)
    ax.axhline(0, color="black", lw=0.5)
    ax.legend()
    return _save(fig, plt, path)
