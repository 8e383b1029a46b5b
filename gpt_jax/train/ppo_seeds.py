"""PPO over several seeds against the same SFT and reward models: the acceptance check that RLHF
beats SFT on held-out gold reward on every seed, not on average.

Runs the PPO stage once per seed in `config.ppo_seeds.seeds` (stage dirs `ppo_seed<s>`, each
resumable and skipped when done; the seed changes the task's prompt draws, the rollouts and the
evaluation samples), then writes `<workdir>/ppo_seeds/summary.json`:
  per_seed: [{seed, sft_gold_reward, ppo_gold_reward, sft_rm_reward, ppo_rm_reward, kl}],
  sft_gold_max, ppo_gold_min, passed (ppo_gold_min > sft_gold_max), means,
and `reward_vs_kl.png` with every seed's held-out evaluations (gold and RM reward against KL).

A finished `<workdir>/ppo` stage whose saved config equals a seed's config (the recipe's PPO run
is seed 0 of `ppo_seeds_tiny`) is reused: `ppo_seed<s>` becomes a symlink to it instead of a
second identical run.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from gpt_jax.metrics import read_metrics, write_summary

STAGE = "ppo_seeds"


def plot_seeds(workdir: Path, stages: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for i, stage in enumerate(stages):
        rows = [r for r in read_metrics(workdir / stage / "metrics.jsonl") if "eval_kl" in r]
        kl = [r["eval_kl"] for r in rows]
        color = f"C{i}"
        ax.plot(kl, [r["eval_gold_reward"] for r in rows], "o-", color=color,
                label=f"{stage}: gold")
        ax.plot(kl, [r["eval_rm_reward"] for r in rows], "s--", color=color, alpha=0.5,
                label=f"{stage}: RM")
    ax.set_xlabel("KL(policy || SFT), nats per response")
    ax.set_ylabel("mean reward, held-out prompts")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def reuse_finished_ppo(config, workdir: Path, stage: str) -> bool:
    """Links <workdir>/<stage> -> ppo when ppo finished with exactly this config; True if linked."""
    from gpt_jax.stages import finished_with

    target = workdir / stage
    if target.exists() or target.is_symlink() or not finished_with(workdir / "ppo", config):
        return False
    target.symlink_to("ppo", target_is_directory=True)
    return True


def run(config, workdir: str) -> dict[str, Any]:
    from gpt_jax.stages import begin_stage, consume_rerun
    from gpt_jax.train import ppo

    stage_dir, done = begin_stage(config, workdir, STAGE)
    if done is not None:
        return done
    t0 = time.perf_counter()
    seeds = [int(s) for s in config.ppo_seeds.seeds]
    stages, per_seed = [], []
    for seed in seeds:
        c = config.copy_and_resolve_references()
        c.unlock()
        c.stage, c.seed = "ppo", seed
        del c["ppo_seeds"]
        stage = f"ppo_seed{seed}"
        consume_rerun(workdir, stage)  # --rerun=ppo_seeds reruns the seeds too
        if reuse_finished_ppo(c, Path(workdir), stage):
            print(f"{stage}: the finished ppo stage has this config; linked {stage} -> ppo")
        s = ppo.run(c, workdir, stage=stage)
        stages.append(stage)
        per_seed.append({"seed": seed, "sft_gold_reward": s["sft"]["gold_reward"],
                         "ppo_gold_reward": s["ppo"]["gold_reward"],
                         "sft_rm_reward": s["sft"]["rm_reward"],
                         "ppo_rm_reward": s["ppo"]["rm_reward"],
                         "sft_accuracy": s["sft"]["accuracy"], "ppo_accuracy": s["ppo"]["accuracy"],
                         "kl": s["ppo"]["kl"]})
    plot_seeds(Path(workdir), stages, stage_dir / "reward_vs_kl.png")
    sft_max = max(r["sft_gold_reward"] for r in per_seed)
    ppo_min = min(r["ppo_gold_reward"] for r in per_seed)
    mean = lambda key: float(np.mean([r[key] for r in per_seed]))  # noqa: E731
    summary = {
        "stage": STAGE,
        "seeds": seeds,
        "per_seed": per_seed,
        "sft_gold_max": sft_max,
        "ppo_gold_min": ppo_min,
        "passed": bool(ppo_min > sft_max),
        "sft_gold_mean": mean("sft_gold_reward"),
        "ppo_gold_mean": mean("ppo_gold_reward"),
        "kl_mean": mean("kl"),
        "wall_seconds": time.perf_counter() - t0,
    }
    write_summary(stage_dir, summary)
    return summary
