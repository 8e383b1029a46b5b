"""recipe_seeds' two figures, from the rows of gpt_jax.seeds_analysis.seed_row.

- matched_kl.png: left, held-out accuracy of temperature-1 samples against KL(policy || SFT) for
  every method and seed (RL runs as their evaluation curves, DPO and FeedME as points, best-of-N
  over N); right, greedy chain-of-thought accuracy (mean of the levels) of each trained model at
  its final KL.
- overoptimization.png: the weak-RM PPO's proxy (its RM) and gold reward against
  d = sqrt(KL), each relative to step 0, every seed, with the Gao et al. RL fit of each.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from gpt_jax.seeds_analysis import CURVES, METHODS, gao_curve

COLORS = {m: f"C{i}" for i, m in enumerate(["sft", *METHODS, "bon_rm", "bon_verifier"])}
MARKERS = ("o", "s", "^", "D", "v")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _label_once(label, seen: set):
    if label in seen:
        return None
    seen.add(label)
    return label


def matched_kl(rows: list[dict], path: Path) -> None:
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    seen_l, seen_r = set(), set()
    for i, row in enumerate(rows):
        mk = MARKERS[i % len(MARKERS)]
        for m in CURVES:
            curve = row["curves"].get(m)
            if curve:
                left.plot([r["kl"] for r in curve], [r["accuracy"] for r in curve], mk + "-",
                          color=COLORS[m], alpha=0.7, ms=3,
                          label=_label_once(METHODS[m], seen_l))
        for m in ("dpo", "feedme"):
            s = row["sampled"].get(m)
            if s:
                left.plot([s["kl"]], [s["accuracy"]], mk, color=COLORS[m], ms=7,
                          label=_label_once(METHODS[m], seen_l))
        if row["bon"]:
            left.plot([b["kl_analytic"] for b in row["bon"]], [b["accuracy"] for b in row["bon"]],
                      mk + ":", color=COLORS["bon_rm"], ms=3,
                      label=_label_once("best-of-N (RM), KL bound", seen_l))
            left.plot([b["verifier_kl"] for b in row["bon"]],
                      [b["verifier_accuracy"] for b in row["bon"]], mk + ":",
                      color=COLORS["bon_verifier"], ms=3,
                      label=_label_once("best-of-N (verifier), exact KL", seen_l))
        for m in ("sft", *METHODS):
            g, s = row["greedy"].get(m), row["sampled"].get(m)
            if g and s:
                right.plot([s["kl"]], [g["cot_mean"]], mk, color=COLORS[m], ms=7,
                           label=_label_once("SFT" if m == "sft" else METHODS[m], seen_r))
    left.set_xscale("symlog", linthresh=0.1)
    right.set_xscale("symlog", linthresh=0.1)
    left.set(xlabel="KL(policy || SFT), nats per response",
             ylabel="held-out accuracy, samples at T=1", title="sampled (markers: seeds)")
    right.set(xlabel="KL(policy || SFT) at the end", ylabel="greedy cot accuracy, mean of L1-L3",
              title="greedy")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def overoptimization(rows: list[dict], path: Path, stage: str = "ppo_weak") -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for i, row in enumerate(rows):
        curve = row["curves"].get(stage)
        if not curve:
            continue
        d = np.sqrt(np.maximum([r["kl"] for r in curve], 0.0))  # a sampled KL can dip below 0
        mk = MARKERS[i % len(MARKERS)]
        for key, color in (("proxy", "C3"), ("gold", "C0")):
            ax.plot(d, [r[key] - curve[0][key] for r in curve], mk, color=color, ms=4,
                    label=f"seed {row['seed']}: {key}")
            fit = row["gao"].get(f"rl_{key}")
            if fit is not None:
                grid = np.linspace(max(d.min(), 1e-3), max(d.max(), 1e-3), 60)
                ax.plot(grid, gao_curve(fit, "rl", grid), "-", color=color, alpha=0.4)
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set(xlabel="d = sqrt(KL(policy || SFT))",
           ylabel="reward - reward at step 0",
           title="PPO against the weak RM: proxy vs gold (lines: Gao et al. RL fit)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
