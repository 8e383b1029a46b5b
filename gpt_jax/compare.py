"""Stage "compare": every policy (base, SFT, PPO, FeedME) side by side on the same held-out problems.

Why: each stage reports its own metric on its own terms; this stage asks every model the same
questions and scores all answers with the same judges, so the recipe's effect (base -> SFT -> RLHF)
and the effect of each answer mode (direct / chain of thought / calculator) read off one table.

The evaluation itself is `gpt_jax.eval.arith` (one implementation, shared with anything else
that scores a policy): per model, greedy accuracy per level (L1/L2/L3) x mode (direct, cot, calc,
calc_off) on `n_per_level` held-out problems per level, pass@k at temperature 1, and
`format_valid`. Around it, this stage adds the judges of the RL stages on the greedy
chain-of-thought answers: `gold_reward` (mean `labeler.gold_score`) and `rm_reward` (the reward
model's score; None without a reward stage), `response_length` (mean generated tokens, stop token
excluded), and over the pass@k samples `distinct_1` / `distinct_2` (unique / total token n-grams
among one problem's samples, mean over problems) and `sample_entropy` (mean -log p of the sampled
tokens, tool-written tokens excluded).

How each model is asked: the base model ("pretrain" stage) with a few-shot completion prompt of
solved TRAIN problems in the same mode; chat models with the task's chat prompt (system prompt =
the mode's instruction). A model whose stage has no summary.json or no checkpoint is skipped and
listed under "missing" (the reason under "missing_why").

Writes `<workdir>/compare/summary.json` (`models.<model>.accuracy.<L1|L2|L3>.<mode>`,
`models.<model>.pass_at_k.<k>`, `models.<model>.format_valid`, ...) and
`<workdir>/compare/samples.jsonl` (one row per held-out problem asked in cot mode:
{"id", "level", "prompt", "reference", "answers": {model: {"text", "gold", "rm"}}}).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from gpt_jax.metrics import read_summary, write_summary
from gpt_jax.stages import begin_stage

STAGE = "compare"
MODEL_STAGES = {"base": "pretrain", "sft": "sft", "ppo": "ppo", "feedme": "feedme", "grpo": "grpo",
                "dpo": "dpo", "ppo_ptx": "ppo_ptx", "grpo_rm": "grpo_rm", "ppo_weak": "ppo_weak"}


def compare_config(**overrides) -> ml_collections.ConfigDict:
    from gpt_jax.eval.arith import eval_config

    cfg = eval_config()
    cfg.models = "base,sft,ppo,feedme"  # names from MODEL_STAGES, in table order
    cfg.score_batch = 64                # rows per reward-model call
    cfg.update(overrides)
    return cfg


def distinct_n(sequences, n: int) -> float:
    """Unique / total n-grams over `sequences` (lists of token ids); 0.0 when there are none."""
    grams = [tuple(s[i:i + n]) for s in sequences for i in range(len(s) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def diversity(sample_ids, samples_per_prompt: int, stop_ids) -> dict[str, float]:
    """distinct-1/2 among each prompt's samples (mean over prompts having any n-gram)."""
    out = {}
    for n in (1, 2):
        values = []
        for start in range(0, len(sample_ids), samples_per_prompt):
            group = [[t for t in s if t not in stop_ids]
                     for s in sample_ids[start:start + samples_per_prompt]]
            if any(len(s) >= n for s in group):
                values.append(distinct_n(group, n))
        out[f"distinct_{n}"] = float(np.mean(values)) if values else 0.0
    return out


# -- models ----------------------------------------------------------------------------------------
def available_models(workdir: str, names) -> tuple[dict[str, str], dict[str, str]]:
    """({model: stage} present, {model: why missing}) for the names asked for."""
    present, missing = {}, {}
    for name in names:
        if name not in MODEL_STAGES:
            raise KeyError(f"compare.models has {name!r}; known: {sorted(MODEL_STAGES)}")
        stage_dir = Path(workdir) / MODEL_STAGES[name]
        if read_summary(stage_dir) is None:
            missing[name] = f"no {stage_dir}/summary.json"
        else:
            present[name] = MODEL_STAGES[name]
    return present, missing


def rm_scorer(workdir: str, tokenizer, task, rows: int):
    """score(problems, texts) -> np.ndarray of reward-model scores, or None without a reward stage."""
    from gpt_jax.data import ranking
    from gpt_jax.train import reward

    reward_dir = Path(workdir) / reward.STAGE
    if read_summary(reward_dir) is None:
        return None
    seq_len = int(json.loads((reward_dir / "config.json").read_text())["train"]["seq_len"])
    model_config, params = reward.load_reward_model(workdir)
    scorer = reward.make_scorer(model_config, None, rows, seq_len)

    def score(problems, texts) -> np.ndarray:
        examples = [ranking.encode_ranking(tokenizer, task.prompt_messages(p), [t], seq_len)
                    for p, t in zip(problems, texts)]
        return np.concatenate(scorer(params, examples)).astype(np.float64)

    return score


def load_model(workdir: str, stage: str):
    """(model config, params) of the stage's checkpoint, or why it cannot be loaded (a str)."""
    from gpt_jax.checkpoint import load_stage

    try:
        return load_stage(workdir, stage)
    except FileNotFoundError as e:
        return f"no checkpoint: {e}"


def eval_sets(config, workdir: str, c):
    """(task, {level: held-out problems}, {mode: few-shot train problems}): what every model is
    asked, a pure function of the config."""
    from gpt_jax.data import tasks_data
    from gpt_jax.tasks.arithmetic import LEVELS, MODES, ArithmeticTask

    task = tasks_data.make_task(config.tasks, config, workdir)
    if not isinstance(task, ArithmeticTask):
        raise ValueError(f"compare evaluates the arithmetic task; config.tasks.name="
                         f"{config.tasks.name!r}")
    sets = {lv: task.problems("heldout", int(c.n_per_level), seed=config.seed, level=lv)
            for lv in LEVELS}
    shots = task.problems("train", max(1, int(c.few_shot)), seed=config.seed, level="L2")
    demos = {m: [task.with_mode(p, m) for p in shots[:int(c.few_shot)]] for m in MODES}
    return task, sets, demos


def run(config, workdir: str) -> dict[str, Any]:
    from gpt_jax import labeler
    from gpt_jax.eval.arith import PolicyEval, evaluate
    from gpt_jax.tokenizer import Tokenizer

    stage_dir, done = begin_stage(config, workdir, STAGE)
    if done is not None:
        return done
    t_start = time.perf_counter()
    c = config.compare
    tokenizer = Tokenizer.load(str(Path(workdir) / "tokenizer" / "tokenizer.json"))
    task, sets, demos = eval_sets(config, workdir, c)
    present, missing = available_models(workdir, [m.strip() for m in c.models.split(",")
                                                  if m.strip()])
    score_rm = rm_scorer(workdir, tokenizer, task, int(c.score_batch))
    stop_ids = {tokenizer.eos_id, tokenizer.token_id("assistant_end")}

    models, answers, seconds, cot_problems = {}, {}, {}, None
    for name, stage in present.items():
        t0 = time.perf_counter()
        loaded = load_model(workdir, stage)
        if isinstance(loaded, str):
            missing[name] = loaded
            continue
        out = evaluate(PolicyEval(name, *loaded, tokenizer, demos, c), sets, c)
        cot_problems = [p for p, _ in out["greedy_cot"]]
        texts = [t for _, t in out.pop("greedy_cot")]
        gold = [labeler.gold_score(p, t) for p, t in zip(cot_problems, texts)]
        rm = score_rm(cot_problems, texts) if score_rm is not None else None
        rm_each = [None] * len(texts) if rm is None else [float(r) for r in rm]
        answers[name] = [{"text": t, "gold": g, "rm": r} for t, g, r in zip(texts, gold, rm_each)]
        sample_ids = out.pop("sample_ids")
        models[name] = {
            "accuracy": out["accuracy"],
            "pass_at_k": out["pass_at_k"],
            "format_valid": out["format_valid"],
            "gold_reward": float(np.mean(gold)),
            "rm_reward": None if rm is None else float(np.mean(rm)),
            "response_length": float(np.mean(out.pop("cot_lengths"))),
            **diversity(sample_ids, int(c.pass_k_samples), stop_ids),
            "sample_entropy": out["sample_entropy"],
            "examples": out["examples"],
        }
        seconds[name] = time.perf_counter() - t0
        acc = {lv: {m: round(v, 3) for m, v in row.items()} for lv, row in out["accuracy"].items()}
        print(f"compare: {name}: accuracy {acc} pass@k {out['pass_at_k']} format_valid "
              f"{out['format_valid']:.3f} ({seconds[name]:.1f} s)", flush=True)

    missing = {name: missing[name] for name in MODEL_STAGES if name in missing}  # table order
    for name, why in missing.items():
        print(f"compare: skipped {name}: {why}", flush=True)
    with open(stage_dir / "samples.jsonl", "w") as f:
        for i, p in enumerate(cot_problems or []):
            row = {"id": p.id, "level": p.level, "prompt": p.question, "reference": p.answer,
                   "answers": {name: answers[name][i] for name in answers}}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    summary = {
        "stage": STAGE,
        "task": task.name,
        "problems_per_level": int(c.n_per_level),
        "pass_k_problems": min(int(c.pass_k_problems), 3 * int(c.n_per_level)),
        "pass_k_samples": int(c.pass_k_samples),
        "pass_k_mode": c.pass_k_mode,
        "few_shot": int(c.few_shot),
        "models": models,
        "missing": list(missing),
        "missing_why": missing,
        "has_reward_model": score_rm is not None,
        "seconds_by_model": seconds,
        "wall_seconds": time.perf_counter() - t_start,
    }
    write_summary(stage_dir, summary)
    return summary
