"""The run's report card: `python -m gpt_jax.report --workdir=runs/tiny` writes <workdir>/REPORT.md
and its figures under <workdir>/report/ (also `write_report(workdir) -> path`).

Why a separate step: it reads only what the stages left behind (each stage's summary.json,
metrics.jsonl and config.json, compare/samples.jsonl, and <workdir>/recipe_summary.json when a
recipe wrote one), so it can be rebuilt at any time, from a partial run or while later stages
still train, and it never changes a stage's outputs.

Layout: a title with the date and git commit; the report card (one headline metric per stage, and
the policies side by side); the environment (CPU, jax devices, mesh, wall time and parameters per
stage); then one section per stage: tokenizer, pretraining, SFT, reward model, PPO, best-of-N,
FeedME, compare. A section whose stage has no summary.json says "not run"; a key a summary lacks
prints "n/a". A section that still fails to render says so in place rather than losing the report.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import subprocess
from pathlib import Path
from typing import Any, Callable

from gpt_jax import report_plots as plots

STAGE_ORDER = ("tokenizer", "pretrain", "sft", "reward", "ppo", "bon", "feedme", "compare")
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


# -- stage sections ------------------------------------------------------------------------------
def tokenizer_section(run: RunFiles, fig_dir: Path) -> list[str]:
    del fig_dir
    s = run.summary("tokenizer")
    lines = table(["", "value"], [
        ["vocab size", fmt(s.get("vocab_size"))],
        ["bytes/token, held-out English", fmt(s.get("bytes_per_token_en"))],
        ["bytes/token, held-out Chinese", fmt(s.get("bytes_per_token_zh"))],
        ["training characters", fmt(s.get("train_chars"))],
        ["train seconds", fmt(s.get("train_seconds"), 1)],
        ["tiktoken fast path exact", fmt(s.get("fast_path_exact"))],
        ["hash", fmt(s.get("tokenizer_hash"))],
    ])
    by_source = s.get("train_chars_by_source")
    if isinstance(by_source, dict) and by_source:
        lines += ["", *table(["source", "training characters"],
                             [[k, fmt(v)] for k, v in by_source.items()])]
    return lines


def pretrain_section(run: RunFiles, fig_dir: Path) -> list[str]:
    s = run.summary("pretrain")
    lines = table(["", "value"], [
        ["parameters", fmt(s.get("num_params"))],
        ["steps", fmt(s.get("steps"))],
        ["tokens seen", fmt(s.get("tokens_seen"))],
        ["final train loss (nats/token)", fmt(s.get("final_train_loss"))],
        ["final eval loss (nats/token)", fmt(s.get("final_eval_loss"))],
        ["eval bits per byte", fmt(s.get("eval_bits_per_byte"))],
        ["tokens/s", fmt(s.get("tokens_per_sec"), 0)],
        ["MFU", fmt(s.get("mfu"))],
        ["compile seconds", fmt(s.get("compile_seconds"), 1)],
        ["mesh", fmt(s.get("mesh"))],
    ])
    by_source = s.get("tokens_by_source")
    if isinstance(by_source, dict) and by_source:
        lines += ["", *table(["source", "tokens"], [[k, fmt(v)] for k, v in by_source.items()])]
    png = plots.plot_loss_curves(fig_dir / "pretrain_loss.png", run.metrics("pretrain"),
                                 "pretraining loss")
    return lines + [""] + image(png, "pretraining loss", run.workdir)


def sft_section(run: RunFiles, fig_dir: Path) -> list[str]:
    s = run.summary("sft")
    lines = table(["", "value"], [
        ["steps", fmt(s.get("steps"))],
        ["final train loss", fmt(s.get("final_train_loss"))],
        ["held-out masked loss (nats/token)", fmt(s.get("heldout_masked_loss"))],
        ["held-out assistant tokens", fmt(s.get("heldout_masked_tokens"), 0)],
        ["task", fmt(s.get("task"))],
        ["task held-out accuracy", fmt(s.get("task_heldout_accuracy"))],
        ["task held-out gold score", fmt(s.get("task_heldout_gold_score"))],
        ["task problems evaluated", fmt(s.get("task_eval_problems"))],
        ["tokens/s", fmt(s.get("tokens_per_sec"), 0)],
    ])
    weights = s.get("mixture_weights")
    if isinstance(weights, dict) and weights:
        lines += ["", "Mixture: " + ", ".join(f"{k} {fmt(v, 3)}" for k, v in weights.items())]
    png = plots.plot_loss_curves(fig_dir / "sft_loss.png", run.metrics("sft"), "SFT loss")
    return lines + [""] + image(png, "SFT loss", run.workdir)


def reward_section(run: RunFiles, fig_dir: Path) -> list[str]:
    s = run.summary("reward")
    accuracies = s.get("heldout_accuracy") if isinstance(s.get("heldout_accuracy"), dict) else {}
    rows = [[name, fmt(get(row, "pairs")), fmt(get(row, "accuracy")),
             fmt(get(row, "length_baseline"))] for name, row in accuracies.items()]
    lines = ["Held-out pairwise accuracy (labeler_vs_gold: against the noise-free gold order; "
             "labeler_vs_labeler: against the noisy labeler; the rest: human sets against the "
             "human order), next to \"prefer the longer response\" on the same pairs:", ""]
    lines += table(["set", "pairs", "RM accuracy", "length baseline"], rows or [["n/a"] * 4])
    lines += ["", *table(["", "value"], [
        ["K (responses per prompt)", fmt(s.get("k"))],
        ["labeler-gold agreement", fmt(s.get("labeler_gold_agreement"))],
        ["labeler flip rate", fmt(s.get("labeler_flip_rate"))],
        ["final train loss / accuracy",
         f"{fmt(s.get('final_train_loss'))} / {fmt(s.get('final_train_accuracy'))}"],
        ["held-out labeler loss", fmt(s.get("heldout_labeler_loss"))],
        ["bias offset", fmt(s.get("bias_offset"))],
    ])]
    png = plots.plot_loss_curves(fig_dir / "reward_loss.png", run.metrics("reward"),
                                 "reward model ranking loss")
    return lines + [""] + image(png, "reward model loss", run.workdir)


def ppo_section(run: RunFiles, fig_dir: Path) -> list[str]:
    s = run.summary("ppo")
    keys = ("gold_reward", "rm_reward", "accuracy", "kl")
    lines = table(["policy", *keys], [
        ["SFT (start)", *[fmt(get(s, f"sft.{k}")) for k in keys[:3]], fmt(0.0)],
        ["PPO (end)", *[fmt(get(s, f"ppo.{k}")) for k in keys]],
    ])
    lines += ["", *table(["", "value"], [
        ["steps", fmt(s.get("steps"))],
        ["gold gain over SFT", fmt(s.get("gold_gain"))],
        ["KL coefficient at the end (adaptive)",
         f"{fmt(s.get('beta_final'))} ({fmt(s.get('adaptive_kl'))})"],
        ["rollout / update seconds per step",
         f"{fmt(s.get('rollout_seconds_per_step'), 2)} / "
         f"{fmt(s.get('update_seconds_per_step'), 2)}"],
    ])]
    seeds = run.summary("ppo_seeds") or {}  # the multi-seed acceptance run, when it was made
    per_seed = [r for r in (s.get("per_seed") or seeds.get("per_seed") or [])
                if isinstance(r, dict)]
    if per_seed:
        lines += ["", "Over seeds (`ppo_seeds`): worst PPO seed vs best SFT seed, held-out gold "
                  f"{fmt(seeds.get('ppo_gold_min'))} vs {fmt(seeds.get('sft_gold_max'))}: "
                  f"{'passed' if seeds.get('passed') else 'not passed'}.", ""]
        lines += table(["seed", "SFT gold", "PPO gold", "SFT RM", "PPO RM", "KL"], [
            [fmt(r.get("seed")), fmt(r.get("sft_gold_reward")), fmt(r.get("ppo_gold_reward")),
             fmt(r.get("sft_rm_reward")), fmt(r.get("ppo_rm_reward")), fmt(r.get("kl"))]
            for r in per_seed])
    rows = run.metrics("ppo")
    ys = {"gold_reward": "gold reward", "rm_reward": "RM reward"}
    held_out = {"eval_gold_reward": "gold reward, held-out", "eval_rm_reward": "RM reward, held-out"}
    by_step = plots.plot_lines(fig_dir / "ppo_reward_vs_step.png", rows, "step",
                               {**ys, **held_out}, "PPO: reward vs step (rollouts, held-out)",
                               "step", "reward")
    evals = [r for r in rows if "eval_kl" in r]  # held-out evaluations, in step order
    by_kl = plots.plot_lines(fig_dir / "ppo_reward_vs_kl.png", evals, "eval_kl", held_out,
                             "PPO: held-out reward vs KL(policy || SFT)", "KL (nats)", "reward",
                             marker="o")
    return (lines + [""] + image(by_step, "PPO reward vs step", run.workdir)
            + image(by_kl, "PPO reward vs KL", run.workdir))


def bon_section(run: RunFiles, fig_dir: Path) -> list[str]:
    s = run.summary("bon")
    rows = [r for r in (s.get("table") or []) if isinstance(r, dict)]
    keys = ("n", "gold_reward", "rm_reward", "accuracy", "kl_analytic", "kl_empirical")
    lines = ["Best of n SFT samples by reward-model score (KL analytic = log n - (n-1)/n):", ""]
    lines += table(list(keys), [[fmt(r.get(k)) for k in keys] for r in rows] or [["n/a"] * 6])
    png = plots.plot_lines(fig_dir / "bon_reward_vs_kl.png", rows, "kl_analytic",
                           {"gold_reward": "gold reward", "rm_reward": "RM reward"},
                           "best-of-n: reward vs KL", "KL analytic (nats)", "reward", marker="o")
    return lines + [""] + image(png, "best-of-n reward vs KL", run.workdir)


def feedme_section(run: RunFiles, fig_dir: Path) -> list[str]:
    s = run.summary("feedme")
    keys = ("gold_reward", "rm_reward", "accuracy", "kl")
    lines = table(list(keys), [[fmt(s.get(k)) for k in keys]])
    lines += ["", *table(["", "value"], [
        ["SFT on the best of n samples, n", fmt(s.get("n"))],
        ["distilled samples", fmt(s.get("distilled"))],
        ["distilled gold / RM reward",
         f"{fmt(s.get('distilled_gold_reward'))} / {fmt(s.get('distilled_rm_reward'))}"],
        ["PPO at a similar KL", fmt(s.get("ppo_at_similar_kl"))],
        ["final train loss", fmt(s.get("final_train_loss"))],
    ])]
    png = plots.plot_loss_curves(fig_dir / "feedme_loss.png", run.metrics("feedme"),
                                 "FeedME loss")
    return lines + [""] + image(png, "FeedME loss", run.workdir)


def compare_section(run: RunFiles, fig_dir: Path) -> list[str]:
    s = run.summary("compare")
    models = s.get("models") if isinstance(s.get("models"), dict) else {}
    modes = ("direct", "cot", "calc", "calc_off")
    lines = [f"Greedy accuracy on {fmt(s.get('problems_per_level'))} held-out problems per level, "
             "the same problems in every mode (calc: the calculator runs inside decoding; "
             "calc_off: the same prompt with no tool attached).", ""]
    rows = [[name, level, *[fmt(get(m, f"accuracy.{level}.{mode}")) for mode in modes]]
            for name, m in models.items() for level in ("L1", "L2", "L3")]
    lines += table(["model", "level", *modes], rows or [["n/a"] * 6])
    ks = sorted({k for m in models.values() for k in (get(m, "pass_at_k") or {})}, key=int)
    keys = ("format_valid", "gold_reward", "rm_reward", "response_length", "distinct_1",
            "distinct_2", "sample_entropy")
    lines += ["", f"pass@k over {fmt(s.get('pass_k_samples'))} temperature-1 samples of "
              f"{fmt(s.get('pass_k_problems'))} problems ({s.get('pass_k_mode')} mode); gold and "
              "RM reward and length over the greedy cot answers (sample_entropy: mean -log p of "
              "the sampled tokens, nats).", ""]
    lines += table(["model", *[f"pass@{k}" for k in ks], *keys], [
        [name, *[fmt(get(m, f"pass_at_k.{k}")) for k in ks], *[fmt(get(m, k)) for k in keys]]
        for name, m in models.items()] or [["n/a"]])
    missing = s.get("missing") or []
    lines += ["", f"Missing models: {', '.join(missing) if missing else 'none'}.", ""]
    cells = {f"{lv} {mode}": {name: get(m, f"accuracy.{lv}.{mode}") for name, m in models.items()}
             for lv in ("L1", "L2", "L3") for mode in modes}
    png = plots.plot_bars(fig_dir / "compare_accuracy.png", cells,
                          "greedy accuracy by level and mode", "accuracy", figsize=(12, 4))
    lines += image(png, "compare accuracy", run.workdir)
    for name, m in models.items():
        examples = get(m, "examples") or {}
        if examples:
            lines += ["", f"**{name}: one answer per cell** (a calculator call reads "
                      "`expr = result`).", ""]
            lines += table(["cell", "question", "answer", "correct"], [
                [cell, escape_cell(str(get(e, "question", "")), 160),
                 escape_cell(str(get(e, "reply", ""))), fmt(get(e, "correct"))]
                for cell, e in examples.items()])
    lines.append("")
    for i, row in enumerate(run.samples("compare")[:SIDE_BY_SIDE_PROMPTS], 1):
        answers = row.get("answers") if isinstance(row.get("answers"), dict) else {}
        lines += [f"**Prompt {i}** ({row.get('level')}, cot). "
                  f"{escape_cell(str(row.get('prompt', '')), 400)} "
                  f"(reference answer: {fmt(row.get('reference'))})", ""]
        lines += table(["model", "gold", "RM", "answer"], [
            [name, fmt(get(a, "gold")), fmt(get(a, "rm")), escape_cell(str(get(a, "text", "")))]
            for name, a in answers.items()])
        lines.append("")
    return lines


Section = Callable[[RunFiles, Path], list[str]]
SECTIONS: list[tuple[str, str | None, Section]] = [
    ("Report card", None, report_card),
    ("Environment", None, environment),
    ("Tokenizer", "tokenizer", tokenizer_section),
    ("Pretraining", "pretrain", pretrain_section),
    ("SFT", "sft", sft_section),
    ("Reward model", "reward", reward_section),
    ("PPO", "ppo", ppo_section),
    ("Best-of-N", "bon", bon_section),
    ("FeedME", "feedme", feedme_section),
    ("Compare: the models side by side", "compare", compare_section),
]


def render(run: RunFiles, fig_dir: Path) -> str:
    lines = [f"# gpt_jax report: `{run.workdir}`", "",
             f"Generated {datetime.datetime.now().isoformat(timespec='seconds')}, "
             f"commit {git_commit()}.", ""]
    for title, stage, section in SECTIONS:
        lines += [f"## {title}", ""]
        if stage is not None and run.summary(stage) is None:
            progress = run.metrics(stage)
            note = (f" (in progress: metrics up to step {progress[-1].get('step')})"
                    if progress else "")
            lines += [f"**not run**: no `{stage}/summary.json` in this workdir{note}.", ""]
            continue
        try:
            lines += section(run, fig_dir)
        except Exception as e:  # noqa: BLE001 - one bad section must not lose the whole report
            lines += [f"_could not render this section: {type(e).__name__}: {e}_"]
        lines.append("")
    text = "\n".join(lines).rstrip() + "\n"
    while "\n\n\n" in text:
        text = text.replace("\n\n\n", "\n\n")
    return text


def write_report(workdir: str | Path) -> Path:
    """Writes <workdir>/REPORT.md (figures in <workdir>/report/) and returns its path."""
    run = RunFiles(workdir)
    if not run.workdir.is_dir():
        raise FileNotFoundError(f"workdir {run.workdir} does not exist")
    text = render(run, run.workdir / "report")
    path = run.workdir / "REPORT.md"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True)
    args = parser.parse_args(argv)
    print(write_report(args.workdir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
