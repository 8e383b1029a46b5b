"""The report's first two sections: the report card (one headline metric per stage, and the
policies side by side on the verifiable task) and the environment (machine, jax devices, mesh,
wall time and parameters per stage, the recipe's measured matmul peaks).

Why its own module: these sections read across all stages (STAGE_ORDER) rather than one stage's
summary, and they hold the only calls out of the workdir (git, jax, the CPU name).
"""
from __future__ import annotations

import subprocess
from pathlib import Path

from gpt_jax.report.runfiles import COMPARE_MODELS, STAGE_ORDER, RunFiles, fmt, get, table


# -- environment ---------------------------------------------------------------------------------
def git_commit() -> str:
    from gpt_jax.paths import REPO_ROOT

    try:
        head = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain",
                                "--untracked-files=no"], capture_output=True, text=True,
                               timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "n/a"
    return f"{head} (with uncommitted changes)" if dirty else head


def jax_devices() -> str:
    try:
        import jax

        devices = jax.devices()
        return f"{len(devices)} × {devices[0].platform} ({devices[0].device_kind})"
    except Exception as e:  # noqa: BLE001 - the report must not die on a backend problem
        return f"n/a ({type(e).__name__})"


def wall_times(run: RunFiles) -> dict[str, tuple[float | None, str]]:
    """{stage: (seconds, where from)}: the recipe's per-stage seconds when it recorded them, else
    the stage summary's wall_seconds (the tokenizer reports train_seconds)."""
    recipe = get(run.recipe_summary(), "seconds", {}) or {}
    out = {}
    for stage in STAGE_ORDER:
        s = run.summary(stage)
        if isinstance(recipe.get(stage), (int, float)):
            out[stage] = (float(recipe[stage]), "recipe_summary.json")
        elif get(s, "wall_seconds") is not None:
            out[stage] = (get(s, "wall_seconds"), "summary wall_seconds")
        elif get(s, "train_seconds") is not None:
            out[stage] = (get(s, "train_seconds"), "summary train_seconds")
        else:
            out[stage] = (None, "")
    return out


def param_count(run: RunFiles, stage: str) -> int | None:
    """num_params from the summary, else computed from the model section of config.json."""
    if isinstance(get(run.summary(stage), "num_params"), int):
        return get(run.summary(stage), "num_params")
    model = get(run.config(stage), "model")
    if not isinstance(model, dict):
        return None
    try:
        from gpt_jax.model import GPTConfig

        return GPTConfig.from_config(model).num_params()
    except (KeyError, TypeError, ValueError):
        return None


def matmul_peaks(run: RunFiles) -> str:
    """The recipe's measured matmul peaks (the speed the wall times were taken at), or n/a."""
    peaks = get(run.recipe_summary(), "matmul_peak_gflops", {}) or {}
    if not all(isinstance(peaks.get(k), (int, float)) for k in ("start", "end")):
        return "n/a"
    return f"{peaks['start']:.1f} / {peaks['end']:.1f} GFLOP/s"


def environment(run: RunFiles, fig_dir: Path) -> list[str]:
    del fig_dir
    from gpt_jax.flops import cpu_name

    times = wall_times(run)
    total = sum(t for t, _ in times.values() if t is not None)
    lines = table(["", ""], [
        ["machine (this process)", cpu_name()],
        ["jax devices (this process)", jax_devices()],
        ["mesh (pretrain)", fmt(get(run.summary("pretrain"), "mesh"))],
        ["parameters (pretrain model)", fmt(param_count(run, "pretrain"))],
        ["wall time, all stages", f"{total:,.1f} s"],
        ["float32 matmul peak, recipe start / end", matmul_peaks(run)],
    ])
    rows = []
    for stage in STAGE_ORDER:
        done = run.summary(stage) is not None
        seconds, source = times[stage]
        rows.append([stage, "done" if done else "not run",
                     "n/a" if seconds is None else f"{seconds:,.1f} s", source or "n/a",
                     fmt(param_count(run, stage)) if stage not in ("tokenizer", "compare", "bon")
                     else "—"])
    return lines + [""] + table(["stage", "status", "wall time", "from", "model params"], rows)


# -- the report card -----------------------------------------------------------------------------
def cot_accuracy(model: dict):
    """Mean greedy cot accuracy over the levels of a compare model entry (None if absent)."""
    table_ = model.get("accuracy")
    if not isinstance(table_, dict):
        return table_
    values = [get(row, "cot") for row in table_.values()]
    values = [v for v in values if isinstance(v, (int, float))]
    return sum(values) / len(values) if values else None


def policy_columns(run: RunFiles) -> dict[str, dict]:
    """{policy: {"gold_reward", "rm_reward", "accuracy", "kl", "source"}} from each stage's own
    evaluation (base from compare; SFT from PPO's baseline, else compare, else SFT's eval)."""
    compare = get(run.summary("compare"), "models", {}) or {}
    ppo, bon, feedme, sft = (run.summary(s) for s in ("ppo", "bon", "feedme", "sft"))
    cols = {}
    compare = {name: {**m, "accuracy": cot_accuracy(m)} for name, m in compare.items()}
    if "base" in compare:
        cols["base"] = {**compare["base"], "kl": None, "source": "compare"}
    if get(ppo, "sft") is not None:
        cols["SFT"] = {**ppo["sft"], "kl": 0.0, "source": "ppo.sft"}
    elif "sft" in compare:
        cols["SFT"] = {**compare["sft"], "kl": 0.0, "source": "compare"}
    elif sft is not None:
        cols["SFT"] = {"gold_reward": sft.get("task_heldout_gold_score"), "rm_reward": None,
                       "accuracy": sft.get("task_heldout_accuracy"), "kl": 0.0, "source": "sft"}
    if get(ppo, "ppo") is not None:
        cols["PPO"] = {**ppo["ppo"], "source": "ppo.ppo"}
    bon_rows = [r for r in (get(bon, "table", []) or []) if isinstance(r, dict)]
    if bon_rows:
        best = max(bon_rows, key=lambda r: r.get("n") or 0)
        cols[f"best-of-{best.get('n')}"] = {**best, "kl": best.get("kl_analytic"),
                                            "source": "bon.table"}
    if feedme is not None:
        cols["FeedME"] = {**feedme, "source": "feedme"}
    return cols


def headline(run: RunFiles) -> list[list[str]]:
    s = {stage: run.summary(stage) for stage in STAGE_ORDER}
    acc = lambda name: get(s["reward"], f"heldout_accuracy.{name}.accuracy")  # noqa: E731
    base = lambda name: get(s["reward"], f"heldout_accuracy.{name}.length_baseline")  # noqa: E731
    bon_rows = [r for r in (get(s["bon"], "table", []) or []) if isinstance(r, dict)]
    bon_best = max(bon_rows, key=lambda r: r.get("n") or 0) if bon_rows else {}
    models = get(s["compare"], "models", {}) or {}
    rows = {
        "tokenizer": ("bytes/token en / zh (vocab)",
                      f"{fmt(get(s['tokenizer'], 'bytes_per_token_en'))} / "
                      f"{fmt(get(s['tokenizer'], 'bytes_per_token_zh'))} "
                      f"({fmt(get(s['tokenizer'], 'vocab_size'))})"),
        "pretrain": ("eval loss nats/token (bits/byte)",
                     f"{fmt(get(s['pretrain'], 'final_eval_loss'))} "
                     f"({fmt(get(s['pretrain'], 'eval_bits_per_byte'))})"),
        "sft": ("held-out masked loss; task accuracy / gold",
                f"{fmt(get(s['sft'], 'heldout_masked_loss'))}; "
                f"{fmt(get(s['sft'], 'task_heldout_accuracy'))} / "
                f"{fmt(get(s['sft'], 'task_heldout_gold_score'))}"),
        "reward": ("held-out accuracy vs gold (length baseline)",
                   f"{fmt(acc('labeler_vs_gold'))} ({fmt(base('labeler_vs_gold'))})"),
        "ppo": ("gold reward SFT → PPO (KL)",
                f"{fmt(get(s['ppo'], 'sft.gold_reward'))} → {fmt(get(s['ppo'], 'ppo.gold_reward'))}"
                f" ({fmt(get(s['ppo'], 'ppo.kl'))})"),
        "bon": (f"gold reward at n={fmt(bon_best.get('n'))} (KL analytic)",
                f"{fmt(bon_best.get('gold_reward'))} ({fmt(bon_best.get('kl_analytic'))})"),
        "feedme": ("gold reward (KL)",
                   f"{fmt(get(s['feedme'], 'gold_reward'))} ({fmt(get(s['feedme'], 'kl'))})"),
        "compare": ("cot accuracy (mean of L1-L3) " + " / ".join(
                        m for m in COMPARE_MODELS if m in models),
                    " / ".join(fmt(cot_accuracy(models[m])) for m in COMPARE_MODELS
                               if m in models) or "n/a"),
        "moderation": ("held-out AUROC (TF-IDF baseline); FPR at 90% recall",
                       f"{fmt(get(s['moderation'], 'auroc'))} "
                       f"({fmt(get(s['moderation'], 'baseline_auroc'))}); "
                       f"{fmt(get(s['moderation'], 'fpr_at_90_recall'))}"),
        "memory": ("recall@5; SFT answers with / without retrieval",
                   f"{fmt(get(s['memory'], 'recall_at_5'))}; "
                   f"{fmt(get(s['memory'], 'accuracy_with'))} / "
                   f"{fmt(get(s['memory'], 'accuracy_without'))}"),
    }
    return [[stage, rows[stage][0], rows[stage][1] if s[stage] is not None else "not run"]
            for stage in STAGE_ORDER]


def report_card(run: RunFiles, fig_dir: Path) -> list[str]:
    del fig_dir
    lines = table(["stage", "headline metric", "value"], headline(run))
    cols = policy_columns(run)
    if cols:
        names = list(cols)
        lines += ["", "Policies on the verifiable task (each from its own stage's evaluation; "
                  "the compare section puts them on the same prompts):", ""]
        lines += table(["metric", *names], [
            [metric, *[fmt(cols[n].get(metric)) for n in names]]
            for metric in ("gold_reward", "accuracy", "rm_reward", "kl")
        ] + [["source", *[cols[n]["source"] for n in names]]])
    return lines
