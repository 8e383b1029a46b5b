"""The report's evaluation section: `<workdir>/eval/summary.json` (python -m gpt_jax.eval) as one
table, a row per stage and a column per suite metric, with chance beside the numbers."""
from __future__ import annotations

from pathlib import Path

from gpt_jax.report.runfiles import RunFiles, fmt, get, table

ARITH_CELLS = (("L1", "cot"), ("L2", "cot"), ("L3", "cot"), ("L3", "calc"))


def eval_section(run: RunFiles, fig_dir: Path) -> list[str]:
    s = run.summary("eval")
    stages = {k: v for k, v in (s.get("stages") or {}).items() if k != "reward"}
    limits = ", ".join(f"{k} {v or 'none'}" for k, v in (s.get("limits") or {}).items())
    lines = [f"`python -m gpt_jax.eval` (limit per unit: {limits}). MMLU is k-shot log-likelihood (chance "
             "0.25; the shots that fit the context are used); bits per byte are on each "
             "pretraining source's held-out text (lower is better); arithmetic is greedy "
             "accuracy per level and answer mode; GSM8K is greedy exact match of the final number "
             "(chat stages also with the calculator); the win rate is against AlpacaEval's "
             "reference outputs, judged by the project's reward model (a proxy, not GPT-4).", ""]
    header = ["stage", "MMLU micro", "MMLU macro", "shots used", "bits/byte (all)"]
    header += [f"{lv} {m}" for lv, m in ARITH_CELLS]
    header += ["GSM8K", "GSM8K + calc", "win rate", "LC win rate"]
    rows = []
    for stage, res in stages.items():
        rows.append([stage, get(res, "mmlu.micro_accuracy"), get(res, "mmlu.macro_accuracy"),
                     fmt(get(res, "mmlu.mean_shots"), 2), get(res, "bpb.all")]
                    + [get(res, f"arith.accuracy.{lv}.{m}") for lv, m in ARITH_CELLS]
                    + [get(res, "gsm8k.accuracy"), get(res, "gsm8k.accuracy_calc"),
                       get(res, "winrate.win_rate"),
                       get(res, "winrate.length_controlled_win_rate")])
    lines += table(header, rows) + [""]
    sources = sorted({src for res in stages.values() for src in get(res, "bpb.per_source", {})})
    if sources:
        lines += ["Bits per byte by pretraining source:", ""]
        lines += table(["stage", *sources],
                       [[stage, *(get(res, f"bpb.per_source.{src}") for src in sources)]
                        for stage, res in stages.items()]) + [""]
    rm = get(s, "stages.reward.rm")
    if rm:
        lines += ["Reward model, pairwise accuracy on held-out pairs (chance 0.5):", ""]
        lines += table(["pairs", "accuracy", "prefer-longer baseline", "pairs scored"],
                       [[name, r.get("accuracy"), r.get("length_baseline"), r.get("pairs")]
                        for name, r in rm.items()])
    return lines
