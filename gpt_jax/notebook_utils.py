"""Helpers behind the notebooks in notebooks/, so their cells stay a few lines long.

The notebooks read their run from environment variables (GPT_JAX_WORKDIR, default runs/tiny;
GPT_JAX_SWEEP, default runs/sweep; relative paths are taken from the repository root), which is
how tests/test_notebooks.py points them at small throwaway runs.

- explore_run.ipynb: `stage_metrics`, `plot_stage`, `report_markdown` / `report_section`;
- compare_models.ipynb: `side_by_side` (greedy answers of base/SFT/PPO on held-out prompts, with
  gold and reward-model scores), `answers_markdown`, `model_means`;
- sweep_results.ipynb: `read_results`, `plot_sweep`.
"""
from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

from gpt_jax.paths import REPO_ROOT


def resolve(path: str | Path) -> Path:
    path = Path(path)
    return path if path.is_absolute() else REPO_ROOT / path


def workdir_from_env(var: str = "GPT_JAX_WORKDIR", default: str = "runs/tiny") -> Path:
    return resolve(os.environ.get(var) or default)


def sweep_dir_from_env() -> Path:
    return workdir_from_env("GPT_JAX_SWEEP", "runs/sweep")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# -- explore_run ---------------------------------------------------------------------------------
def stage_metrics(workdir: str | Path) -> dict[str, list[dict]]:
    """{stage: metrics.jsonl rows} for every stage of the pipeline that logged any."""
    from gpt_jax.report import STAGE_ORDER, RunFiles

    run = RunFiles(workdir)
    return {s: run.metrics(s) for s in STAGE_ORDER if run.metrics(s)}


def numeric_keys(rows: list[dict]) -> list[str]:
    """Keys other than "step" holding a finite number in some row, in first-seen order."""
    keys = dict.fromkeys(k for r in rows for k, v in r.items() if k != "step" and _is_number(v))
    return list(keys)


def plot_stage(stage: str, rows: list[dict], columns: int = 3):
    """A figure with one panel per logged metric of the stage, against the step."""
    import matplotlib.pyplot as plt

    from gpt_jax.report_plots import series

    keys = numeric_keys(rows)
    n_rows = max(1, math.ceil(len(keys) / columns))
    fig, axes = plt.subplots(n_rows, columns, figsize=(4 * columns, 2.6 * n_rows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        xs, ys = series(rows, "step", key)
        ax.plot(xs, ys, marker="." if len(xs) < 20 else None)
        ax.set_title(key, fontsize=9)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.suptitle(stage)
    fig.tight_layout()
    return fig


def report_markdown(workdir: str | Path) -> str:
    """(Re)writes <workdir>/REPORT.md and returns its text."""
    from gpt_jax.report import write_report

    return write_report(workdir).read_text()


def report_section(markdown: str, title: str) -> str:
    """The body of the "## <title>" section of a report (empty when there is none)."""
    out, inside = [], False
    for line in markdown.splitlines():
        if line.startswith("## "):
            inside = line[3:].strip() == title
            continue
        if inside:
            out.append(line)
    return "\n".join(out).strip()


# -- compare_models ------------------------------------------------------------------------------
def task_config(workdir: str | Path):
    """The task section (+ seed, data) the run's SFT stage used, else the tiny compare preset's."""
    import ml_collections

    for stage in ("sft", "reward", "compare"):
        path = Path(workdir) / stage / "config.json"
        if path.exists():
            saved = json.loads(path.read_text())
            if "tasks" in saved:
                return ml_collections.ConfigDict(
                    {k: saved[k] for k in ("tasks", "seed", "data") if k in saved})
    from gpt_jax.recipe import load_experiment

    return load_experiment("compare_tiny")


def side_by_side(workdir: str | Path, n_prompts: int = 3, max_new_tokens: int = 48,
                 models=("base", "sft", "ppo"), few_shot: int = 3):
    """(rows, missing): greedy answers of the models that exist on the first `n_prompts` held-out
    problems, each with its gold score, correctness and reward-model score (None without a
    reward stage). rows: [{"prompt", "reference", "answers": {model: {...}}}]."""
    from gpt_jax import compare, labeler
    from gpt_jax.data import tasks_data
    from gpt_jax.eval.arith import PolicyEval, eval_config
    from gpt_jax.tokenizer import Tokenizer

    workdir = str(workdir)
    config = task_config(workdir)
    c = eval_config(max_new_tokens=max_new_tokens, few_shot=few_shot, n_per_level=1,
                    gen_batch=64)
    tokenizer = Tokenizer.load(str(Path(workdir) / "tokenizer" / "tokenizer.json"))
    task, problems = tasks_data.rl_problems(config, "heldout", workdir, n=n_prompts)
    _, _, demos = compare.eval_sets(config, workdir, c)
    present, missing = compare.available_models(workdir, list(models))
    score_rm = compare.rm_scorer(workdir, tokenizer, task, rows=16)
    rows = [{"prompt": p.question, "reference": p.answer, "answers": {}} for p in problems]
    for name, stage in present.items():
        loaded = compare.load_model(workdir, stage)
        if isinstance(loaded, str):
            missing[name] = loaded
            continue
        policy = PolicyEval(name, *loaded, tokenizer, demos, c)
        texts = [a[0] for a in policy.answer(problems, tool=False, temperature=0.0)]
        rm = score_rm(problems, texts) if score_rm is not None else [None] * len(texts)
        for row, p, text, r in zip(rows, problems, texts, rm):
            row["answers"][name] = {"text": text, "gold": labeler.gold_score(p, text),
                                    "correct": labeler.is_correct(p, text),
                                    "rm": None if r is None else float(r)}
    return rows, list(missing)


def answers_markdown(rows: list[dict]) -> str:
    from gpt_jax.report import escape_cell, fmt, table

    lines = []
    for i, row in enumerate(rows, 1):
        lines += [f"**{i}. {escape_cell(row['prompt'], 400)}** (reference: {row['reference']})",
                  ""]
        lines += table(["model", "gold", "correct", "RM", "answer"], [
            [name, fmt(a["gold"]), fmt(a["correct"]), fmt(a["rm"]), escape_cell(a["text"])]
            for name, a in row["answers"].items()])
        lines.append("")
    return "\n".join(lines)


def model_means(rows: list[dict]) -> dict[str, dict[str, float | None]]:
    """{model: mean gold, accuracy and RM score over the rows}."""
    out = {}
    for name in dict.fromkeys(m for r in rows for m in r["answers"]):
        answers = [r["answers"][name] for r in rows if name in r["answers"]]
        rms = [a["rm"] for a in answers if a["rm"] is not None]
        out[name] = {"gold": sum(a["gold"] for a in answers) / len(answers),
                     "accuracy": sum(a["correct"] for a in answers) / len(answers),
                     "rm": sum(rms) / len(rms) if rms else None}
    return out


# -- sweep_results -------------------------------------------------------------------------------
def _parse(value: str):
    if value == "":
        return None
    try:
        number = float(value)
    except ValueError:
        return value
    return int(number) if number.is_integer() and "." not in value and "e" not in value else number


def read_results(sweep_dir: str | Path) -> list[dict]:
    """<sweep_dir>/results.csv rows, numbers parsed, empty cells None."""
    with open(Path(sweep_dir) / "results.csv", newline="") as f:
        return [{k: _parse(v) for k, v in row.items()} for row in csv.DictReader(f)]


def plot_sweep(rows: list[dict], x: str | None = None, metrics: list[str] | None = None,
               columns: int = 3):
    """One panel per numeric metric that varies across runs, against `x` (default: the first
    column after "status", i.e. the first swept override)."""
    import matplotlib.pyplot as plt

    names = list(rows[0]) if rows else []
    if x is None:
        x = names[names.index("status") + 1] if "status" in names[:-1] else names[0]
    if metrics is None:
        metrics = [c for c in names if c not in ("run", "status", x)
                   and all(_is_number(r.get(c)) for r in rows)
                   and len({r.get(c) for r in rows}) > 1]
    n_rows = max(1, math.ceil(len(metrics) / columns))
    fig, axes = plt.subplots(n_rows, columns, figsize=(4 * columns, 2.8 * n_rows), squeeze=False)
    numeric_x = all(_is_number(r.get(x)) for r in rows)
    order = sorted(rows, key=lambda r: r.get(x)) if numeric_x else rows
    xs = [r.get(x) if numeric_x else str(r.get(x)) for r in order]
    for ax, metric in zip(axes.flat, metrics):
        ax.plot(xs, [r.get(metric) for r in order], marker="o")
        ax.set(title=metric, xlabel=x)
        if numeric_x and min(xs) > 0 and max(xs) / min(xs) >= 10:
            ax.set_xscale("log")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    fig.tight_layout()
    return fig
