"""FeedME-style distillation (rejection-sampling fine-tuning), its own stage after the RM.

1. For `feedme.train_prompts` training task prompts, sample `feedme.n` responses from the SFT
   model and keep the reward model's favourite of each prompt (only responses that ended with the
   end token), saved to `<stage>/best.jsonl` (a resumed run reuses them).
2. Fine-tune the SFT model on them with the SFT loss (assistant tokens only), the shared loop
   (`sft.train_from_parent`): the prompt ids, the sampled response ids and the end token, exactly
   as sampled.
3. Evaluate like PPO (gpt_jax/train/ppo.evaluate: same held-out prompts, sampling seeds and
   samples per prompt): gold and RM reward, accuracy and KL(FeedME || SFT); and, when the PPO
   stage has run, PPO's held-out evaluation nearest in KL, for the comparison at similar KL.

Writes `<workdir>/feedme/summary.json`; the checkpoint loads with checkpoint.load_stage.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from gpt_jax.metrics import write_jsonl, write_summary
from gpt_jax.stages import begin_stage

STAGE = "feedme"


def feedme_config(**overrides) -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict({
        "reward_stage": "reward",
        "ppo_stage": "ppo",           # compared at similar KL when present
        "n": 8,                       # samples per training prompt; the RM-best is kept
        "train_prompts": 256,
        "max_prompt_len": 48,
        "max_new_tokens": 40,
        "temperature": 1.0,
        "gen_batch": 256,
        "heldout_prompts": 64,        # evaluation, as in PPO
        "eval_samples": 2,
        "eval_batch": 32,
    })
    cfg.update(overrides)
    return cfg


def distillation_examples(prompt_ids, samples, n: int, end_id: int) -> tuple[list, list[dict]]:
    """[(ids, loss_mask)] of prompt + RM-best finished response + end, and their records."""
    examples, records = [], []
    for i, prompt in enumerate(prompt_ids):
        rm = np.where(samples["finished"][i], samples["rm"][i], -np.inf)
        if not np.isfinite(rm).any():
            continue
        j = int(rm.argmax())
        response = samples["ids"][i * n + j] + [end_id]
        ids = np.asarray(list(prompt) + response, np.int32)
        # tool-written tokens (calculator results) are read, never trained on; the end token is
        # the model's. No "tool_masks": no tool ran.
        tool = samples.get("tool_masks")
        written = [1 - m for m in tool[i * n + j]] if tool else [1] * (len(response) - 1)
        written += [1]
        mask = np.asarray([0] * len(prompt) + written, np.int32)
        examples.append((ids, mask))
        records.append({"prompt_ids": list(map(int, prompt)), "response_ids": response,
                        "loss_mask": written,
                        "text": samples["texts"][i * n + j], "rm": float(samples["rm"][i, j]),
                        "gold": float(samples["gold"][i, j])})
    return examples, records


def ppo_at_kl(workdir: str, ppo_stage: str, kl: float) -> dict | None:
    """PPO's held-out evaluation (eval rows of its metrics.jsonl) whose KL is nearest `kl`."""
    from gpt_jax.metrics import read_metrics

    path = Path(workdir) / ppo_stage / "metrics.jsonl"
    if not path.exists():
        return None
    evals = [r for r in read_metrics(path) if "eval_kl" in r]
    if not evals:
        return None
    best = min(evals, key=lambda r: abs(r["eval_kl"] - kl))
    return {"step": best["step"], "kl": best["eval_kl"], "gold_reward": best["eval_gold_reward"],
            "rm_reward": best["eval_rm_reward"], "accuracy": best["eval_accuracy"]}


def _load_or_sample(stage_dir: Path, sampler, task, problems, fc, seed: int):
    path = stage_dir / "best.jsonl"
    if path.exists():
        records = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
        return [(np.asarray(r["prompt_ids"] + r["response_ids"], np.int32),
                 np.asarray([0] * len(r["prompt_ids"]) + r["loss_mask"], np.int32))
                for r in records], records
    samples = sampler.sample(task, problems, int(fc.n), seed)
    end_id = sampler.tokenizer.token_id("assistant_end")
    examples, records = distillation_examples(sampler.prompt_ids(task, problems), samples,
                                              int(fc.n), end_id)
    write_jsonl(path, records)
    return examples, records


def run(config, workdir: str) -> dict[str, Any]:
    from gpt_jax.data import sft as sft_data
    from gpt_jax.data import tasks_data
    from gpt_jax.train import sft
    from gpt_jax.train.bon import Sampler

    stage_dir, done = begin_stage(config, workdir, STAGE, parent=config.parent)
    if done is not None:
        return done
    t0 = time.perf_counter()
    fc, tcfg = config.feedme, config.train
    sampler = Sampler(config, workdir, config.parent, fc.reward_stage, fc.max_prompt_len,
                      fc.max_new_tokens, fc.temperature, fc.gen_batch)
    task, problems = tasks_data.rl_problems(config, "train", workdir, n=int(fc.train_prompts))
    examples, records = _load_or_sample(stage_dir, sampler, task, problems, fc,
                                        seed=config.seed * 7919 + 77)
    if not examples:
        raise ValueError(f"feedme: none of the {len(problems)} prompts got a finished response")
    sample_seconds = time.perf_counter() - t0
    train_iter = sft_data.SFTIterator(
        {"feedme": examples}, {"feedme": 1.0}, batch_size=tcfg.batch_size, seq_len=tcfg.seq_len,
        seed=config.seed, split="train", pad_id=sampler.tokenizer.pad_id,
        pack=config.data.pack_conversations)
    result = sft.train_from_parent(config, workdir, stage_dir, STAGE, train_iter)

    t_eval = time.perf_counter()
    sft_eval, feedme_eval = sampler.heldout_eval(config, workdir, task, result.state.params,
                                                 fc.heldout_prompts, fc.eval_batch,
                                                 fc.eval_samples)
    summary = {
        "stage": STAGE,
        "parent": config.parent,
        "reward_model": fc.reward_stage,
        "n": int(fc.n),
        "train_prompts": len(problems),
        "distilled": len(records),
        "distilled_gold_reward": float(np.mean([r["gold"] for r in records])),
        "distilled_rm_reward": float(np.mean([r["rm"] for r in records])),
        "sft": sft_eval,
        "feedme": feedme_eval,
        "gold_reward": feedme_eval["gold_reward"],
        "rm_reward": feedme_eval["rm_reward"],
        "accuracy": feedme_eval["accuracy"],
        "kl": feedme_eval["kl"],
        "ppo_at_similar_kl": ppo_at_kl(workdir, fc.ppo_stage, feedme_eval["kl"]),
        "final_train_loss": result.last_train.get("loss"),
        "steps": int(tcfg.total_steps),
        "sample_seconds": sample_seconds,
        "eval_seconds": time.perf_counter() - t_eval,
        "wall_seconds": time.perf_counter() - t0,
    }
    write_summary(stage_dir, summary)
    return summary
