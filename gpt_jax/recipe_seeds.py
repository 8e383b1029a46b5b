"""Stage "recipe_seeds": post-training methods compared over whole-recipe seeds.

Why: a claim that RL from feedback beats SFT holds only if it holds when everything upstream is
trained anew. Changing the pretraining seed alone once turned the tiny PPO's gain into a loss,
so a single seed cannot carry it.

For each seed in `config.seeds`, `config.recipe` (a recipe config whose sections are stages,
experiments/configs/recipe_seeds.py) runs in `<workdir>/recipe_seeds/seed<s>/`. Every section's
`seed` is set to s: pretraining, SFT, both reward models and every RL stage. Two things are shared
on purpose: the tokenizer and the data cache (symlinked to the first seed's), and the compare
stage's held-out problems. Each seed's recipe resumes and skips like `make run`'s, and a stage
the workdir itself already finished with exactly a seed's config (seed 0 trains exactly
`make run`'s stages) is linked into that seed instead of trained twice (`link_finished`).

After the stages, the alignment tax: bits per byte of every pretraining source's held-out text
under each model (`eval.suites.bpb`, cached in the seed's eval/parts.jsonl).

Writes `<workdir>/recipe_seeds/`:
- summary.json: per-seed results (`seeds_analysis.seed_row`), their mean ± sd, the `claims`
  (`seeds_analysis.claims`, each `passed` only when it holds in every seed), the Gao et al. fits
  and the matched-KL table;
- matched_kl.png: held-out accuracy against KL(policy || SFT), every method, every seed;
- overoptimization.png: the weak-RM PPO's proxy and gold reward against sqrt(KL), with the fits.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import ml_collections

from gpt_jax.metrics import write_summary
from gpt_jax.stages import begin_stage

STAGE = "recipe_seeds"
SECTIONS = ("tokenizer", "pretrain", "sft", "reward", "reward_weak", "ppo", "ppo_ptx", "ppo_weak",
            "bon", "feedme", "grpo", "grpo_rm", "dpo", "compare")
UNSEEDED = ("tokenizer", "compare")  # shared by every seed: the vocabulary, the test problems
SHARED_DIRS = ("tokenizer", "data_cache")
TAX_STAGES = ("pretrain", "sft", "ppo", "ppo_ptx", "grpo", "grpo_rm", "dpo", "feedme")


def claims_config(**overrides) -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict({
        "level": "L2",          # grpo_beats_sft: greedy accuracy at this level and mode
        "mode": "cot",
        "grpo_margin": 0.05,    # ... GRPO's at least this much above SFT's
        "max_kl": 3.0,          # ... at a KL(GRPO || SFT) of at most this (nats per response)
        "rl_model": "grpo",     # rl_narrows: the RL model whose pass@8 - pass@1 is compared
        "weak_ppo": "ppo_weak",  # overoptimization: the PPO run against the weak RM
    })
    cfg.update(overrides)
    return cfg


def parse_seeds(seeds) -> list[int]:
    """"0,1,2" or [0, 1, 2] -> [0, 1, 2]; at least one, no repeats."""
    items = seeds.split(",") if isinstance(seeds, str) else list(seeds)
    out = [int(s) for s in items if str(s).strip()]
    if not out or len(set(out)) != len(out):
        raise ValueError(f"config.seeds={seeds!r}: expected distinct integers such as 0,1,2")
    return out


def seeded(recipe, seed: int) -> ml_collections.ConfigDict:
    """A copy of `recipe` with every seeded section's `seed` set to `seed`."""
    config = recipe.copy_and_resolve_references()
    stages = [s.strip() for s in config.stages.split(",") if s.strip()]
    for section in stages:
        if section not in UNSEEDED and "seed" in config[section]:
            config[section].seed = seed
    return config


def share(first: Path, seed_dir: Path) -> None:
    """Links seed_dir/{tokenizer,data_cache} to the first seed's (content-keyed, seed-free)."""
    for name in SHARED_DIRS:
        target = seed_dir / name
        if not target.exists() and not target.is_symlink() and (first / name).exists():
            target.symlink_to(Path("..") / first.name / name, target_is_directory=True)


def link_finished(workdir: Path, seed_dir: Path, recipe) -> list[str]:
    """Links seed_dir/<section> -> <workdir>/<section> for each section that `workdir` (e.g. the
    `make run` workdir recipe_seeds runs in) already finished with exactly this seed's config and
    whose upstream stages are linked too (seed 0 trains exactly make run's stages), so they are
    not trained twice. The data cache goes with the tokenizer. Returns the linked sections."""
    from gpt_jax.stages import finished_with, upstream_stages

    stages = [x.strip() for x in recipe.stages.split(",") if x.strip()]
    linked: list[str] = []
    for section in stages:
        target = seed_dir / section
        if target.exists() or target.is_symlink() or not finished_with(workdir / section,
                                                                       recipe[section]):
            continue
        if not (set(upstream_stages(recipe[section], recipe[section].stage)) & set(stages)
                <= set(linked)):
            continue  # it read a stage this seed trains itself
        target.symlink_to(Path("../..") / section, target_is_directory=True)
        linked.append(section)
    cache = seed_dir / "data_cache"
    if "tokenizer" in linked and (workdir / "data_cache").exists() and not cache.exists():
        cache.symlink_to(Path("../..") / "data_cache", target_is_directory=True)
    return linked


def alignment_tax(seed_dir: Path, max_bytes: int, log=print) -> dict[str, Any]:
    """{stage: bpb result} for each finished stage of TAX_STAGES (held-out pretraining text)."""
    from gpt_jax.eval import suites
    from gpt_jax.eval.harness import Parts, eval_config, finished

    c = eval_config(bpb_max_bytes=int(max_bytes), suites="bpb")
    ctx = suites.Context(seed_dir, c, Parts(seed_dir / "eval" / "parts.jsonl"), log)
    out = {}
    for stage in finished(seed_dir, list(TAX_STAGES)):
        result = suites.bpb(ctx, stage)
        if result is not None:
            out[stage] = result
    return out


def run(config, workdir: str) -> dict[str, Any]:
    from gpt_jax import recipe, seeds_analysis, seeds_plots

    stage_dir, done = begin_stage(config, workdir, STAGE)
    if done is not None:
        return done
    t0 = time.perf_counter()
    seeds = parse_seeds(config.seeds)
    rows = []
    for i, seed in enumerate(seeds):
        seed_dir = stage_dir / f"seed{seed}"
        seed_dir.mkdir(exist_ok=True)
        if i > 0:
            share(stage_dir / f"seed{seeds[0]}", seed_dir)
        recipe_config = seeded(config.recipe, seed)
        linked = link_finished(Path(workdir), seed_dir, recipe_config)
        if linked:
            print(f"[{STAGE}] seed {seed}: {workdir} finished {', '.join(linked)} with this "
                  f"seed's configs; linked, not trained again", flush=True)
        print(f"[{STAGE}] seed {seed} ({i + 1}/{len(seeds)}) in {seed_dir}", flush=True)
        recipe.run(recipe_config, str(seed_dir))
        tax = alignment_tax(seed_dir, int(config.bpb_max_bytes))
        saved = seed_dir / "recipe_summary.json"
        recipe_summary = json.loads(saved.read_text()) if saved.exists() else {}
        rows.append(seeds_analysis.seed_row(seed_dir, seed, config.claims, tax, recipe_summary))
    summary = seeds_analysis.summarize(rows, config.claims)
    seeds_plots.matched_kl(rows, stage_dir / "matched_kl.png")
    seeds_plots.overoptimization(rows, stage_dir / "overoptimization.png")
    summary.update(stage=STAGE, seeds=seeds, wall_seconds=time.perf_counter() - t0)
    write_summary(stage_dir, summary)
    return summary
