"""Best-of-N sampling against the reward model, and the samples FeedME distills.

Best-of-N (the "bon" stage): for each held-out prompt, draw `n_max` responses from the policy
(`config.parent`, the SFT model) at temperature 1 and score each with the reward model. For every
N in `bon.n_values`, the n_max samples of a prompt are cut into n_max / N disjoint groups and the
RM-best of each group is "the" best-of-N answer, so every N is measured on the same draws with
n_max / N answers per prompt. Reported per N: mean gold score (the labeler), mean RM score,
accuracy, and two KLs from the sampling policy:
- analytic: log N - (N - 1) / N, the KL of best-of-N when rewards have no ties: an upper bound
  (ties, like a verifier's two values, lower it);
- empirical: the exact KL of best-of-N over the empirical distribution of each prompt's n_max
  draws (`empirical_kl`): identical responses tie, which lowers it below the analytic value.

The same draws are also picked by the verifier (the gold labeler's correctness: the first correct
draw of a group): `verifier_accuracy` is then pass@N, and `verifier_kl` is its exact KL for a
binary reward, q log(q/p) + (1 - q) log((1 - q)/(1 - p)) with q = 1 - (1 - p)^N, at each prompt's
empirical success rate p (`verifier_kl`).

FeedME data (`best_of_n_samples`): the RM-best of N responses to each TRAINING prompt, as token
ids, which gpt_jax/train/feedme.py fine-tunes on.

Writes `<workdir>/bon/summary.json` ("table": one row per N) and samples.jsonl.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from gpt_jax import labeler
from gpt_jax.metrics import write_summary
from gpt_jax.stages import begin_stage

STAGE = "bon"


def bon_config(**overrides) -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict({
        "reward_stage": "reward",
        "n_values": [1, 2, 4, 8, 16],  # each must divide n_max
        "n_max": 16,                   # samples per held-out prompt
        "heldout_prompts": 64,
        "max_prompt_len": 48,
        "max_new_tokens": 40,
        "temperature": 1.0,
        "gen_batch": 256,              # rows per generate() call
    })
    cfg.update(overrides)
    return cfg


def analytic_kl(n: int) -> float:
    return math.log(n) - (n - 1) / n


def empirical_kl(scores: np.ndarray, n: int) -> float:
    """KL(best-of-N || pi) with pi = the empirical distribution of each prompt's draws.

    scores [P, n_max]. Draws with equal scores are one outcome (ties); with F the empirical CDF,
    best-of-N picks outcome s with probability F(s)^N - F(s-)^N. The KL is exact for that plug-in
    distribution and averaged over prompts: below the analytic value when draws tie, and capped
    at log n_max (a consistent estimate as n_max grows)."""
    out = []
    for row in scores:
        _, counts = np.unique(row, return_counts=True)
        p_base = counts / counts.sum()
        cdf = np.cumsum(p_base)
        p_bon = cdf**n - np.concatenate([[0.0], cdf[:-1]])**n
        keep = p_bon > 0
        out.append(float((p_bon[keep] * np.log(p_bon[keep] / p_base[keep])).sum()))
    return float(np.mean(out))


def verifier_kl(p, n: int):
    """KL(best-of-N || pi) when a binary verifier picks: any correct draw if there is one.

    With success probability p per draw, the pick is correct with probability q = 1 - (1 - p)^n
    and, within each class, distributed as pi is, so the KL is exactly
    q log(q / p) + (1 - q) log((1 - q) / (1 - p)); 0 when p is 0 or 1. Elementwise on arrays."""
    p = np.asarray(p, np.float64)
    q = 1.0 - (1.0 - p) ** n
    with np.errstate(divide="ignore", invalid="ignore"):
        right = np.where(q > 0, q * np.log(q / p), 0.0)
        wrong = np.where(q < 1, (1 - q) * np.log((1 - q) / (1 - p)), 0.0)
    return np.where((p <= 0) | (p >= 1), 0.0, right + wrong)


def best_of_n_table(rm: np.ndarray, gold: np.ndarray, correct: np.ndarray,
                    n_values) -> list[dict[str, float]]:
    """rm/gold/correct [P, n_max] -> one row per N (see the module docstring), with the RM as the
    selector and (`verifier_*`) with the verifier: the first correct draw of each group, else its
    first draw; its KL is `verifier_kl` at each prompt's empirical success rate (a plug-in
    estimate from n_max draws), averaged over prompts."""
    p, n_max = rm.shape
    p_hat = correct.mean(axis=1)
    rows = []
    for n in n_values:
        if n_max % n:
            raise ValueError(f"bon.n_values: {n} does not divide n_max={n_max}")
        groups = n_max // n
        pick = rm.reshape(p, groups, n).argmax(-1) + np.arange(groups) * n  # [P, G]
        verified = correct.reshape(p, groups, n).argmax(-1) + np.arange(groups) * n
        take = lambda x, at=pick: np.take_along_axis(x, at, axis=1)  # noqa: E731
        rows.append({"n": int(n), "gold_reward": float(take(gold).mean()),
                     "rm_reward": float(take(rm).mean()),
                     "accuracy": float(take(correct).mean()),
                     "kl_analytic": analytic_kl(n),
                     "kl_empirical": empirical_kl(rm, n),
                     "verifier_accuracy": float(take(correct, verified).mean()),
                     "verifier_gold_reward": float(take(gold, verified).mean()),
                     "verifier_kl": float(verifier_kl(p_hat, n).mean()),
                     "answers": int(p * groups)})
    return rows


class Sampler:
    """K sampled responses per task problem from a policy, with RM and gold scores."""

    def __init__(self, config, workdir: str, parent: str, reward_stage: str, max_prompt_len: int,
                 max_new_tokens: int, temperature: float, gen_batch: int):
        from gpt_jax import sharding as shd
        from gpt_jax.checkpoint import load_stage
        from gpt_jax.tokenizer import Tokenizer
        from gpt_jax.train.ppo import Scorer, maybe_use_calculator, ppo_config
        from gpt_jax.train.ppo_trainer import PPOTrainer
        from gpt_jax.train.reward import load_reward_model

        self.tokenizer = Tokenizer.load(str(Path(workdir) / "tokenizer" / "tokenizer.json"))
        self.model_config, self.params = load_stage(workdir, parent)
        rm_config, rm_params = load_reward_model(workdir, reward_stage)
        stop = (self.tokenizer.token_id("assistant_end"), self.tokenizer.eos_id)
        pc = ppo_config(max_prompt_len=max_prompt_len, max_new_tokens=max_new_tokens,
                        temperature=temperature)
        self.engine = PPOTrainer(self.model_config, pc, config.optim, 1,
                                 shd.mesh_from_config(config.mesh), self.tokenizer.pad_id, stop,
                                 self.tokenizer.vocab_size)
        maybe_use_calculator(self.engine, config, self.tokenizer)
        self.scorer = Scorer(self.engine, self.tokenizer, rm_config, rm_params)
        self.gen_batch = int(gen_batch)

    def prompt_ids(self, task, problems) -> list[list[int]]:
        return [self.tokenizer.render_for_completion(task.prompt_messages(p)) for p in problems]

    def sample(self, task, problems, k: int, seed: int) -> dict[str, Any]:
        """{"ids": [P*k] response ids (no end token), "tool_masks" [P*k] (1 where the tool wrote
        the token), "texts", "rm" / "gold" / "correct" / "finished" [P, k]}."""
        prompts = [p for p in self.prompt_ids(task, problems) for _ in range(k)]
        rows = [q for q in problems for _ in range(k)]
        ids, tool_masks, texts, rm, finished = [], [], [], [], []
        b = self.gen_batch
        for start in range(0, len(prompts), b):
            chunk = prompts[start:start + b]
            n = len(chunk)
            chunk = chunk + [chunk[-1]] * (b - n)  # one compiled shape
            rollout, gen = self.engine.rollout(self.params, chunk, seed + start)
            ids += [self.engine.response_ids(gen, i) for i in range(n)]
            tool_masks += [self.engine.response_tool_mask(gen, i) for i in range(n)]
            texts += self.scorer.texts(gen)[:n]
            rm.append(self.scorer.rm(rollout)[:n])
            finished.append(gen.finished[:n])
        gold = self.scorer.gold(rows, texts)
        correct = np.array([labeler.is_correct(q, t) for q, t in zip(rows, texts)], np.float32)
        shape = (len(problems), k)
        return {"ids": ids, "tool_masks": tool_masks, "texts": texts,
                "rm": np.concatenate(rm).reshape(shape),
                "finished": np.concatenate(finished).reshape(shape),
                "gold": gold.reshape(shape), "correct": correct.reshape(shape)}


    def heldout_eval(self, config, workdir: str, task, policy_params, n_prompts: int,
                     batch: int, samples: int) -> tuple[dict, dict]:
        """(SFT's, the policy's) sampled evaluation on `n_prompts` held-out prompts, PPO's
        (`ppo.evaluate`: gold and RM reward, accuracy, KL(policy || this sampler's model)) with
        PPO's evaluation seed, so the SFT model's draws are those PPO's step 0 scores."""
        from gpt_jax.data import tasks_data
        from gpt_jax.train.ppo import evaluate

        _, held = tasks_data.rl_problems(config, "heldout", workdir, n=int(n_prompts))
        prompts = self.prompt_ids(task, held)
        ref = self.engine.place_reference(self.params)
        seed = config.seed * 7919 + 104_729

        def run_eval(params):
            return evaluate(self.engine, self.scorer, params, ref, prompts, held, int(batch),
                            int(samples), seed)[0]

        return run_eval(ref), run_eval(policy_params)


def run(config, workdir: str) -> dict[str, Any]:
    from gpt_jax.data import tasks_data

    stage_dir, done = begin_stage(config, workdir, STAGE, parent=config.parent)
    if done is not None:
        return done
    t0 = time.perf_counter()
    bc = config.bon
    sampler = Sampler(config, workdir, config.parent, bc.reward_stage, bc.max_prompt_len,
                      bc.max_new_tokens, bc.temperature, bc.gen_batch)
    task, problems = tasks_data.rl_problems(config, "heldout", workdir,
                                              n=int(bc.heldout_prompts))
    s = sampler.sample(task, problems, int(bc.n_max), seed=config.seed * 7919 + 31)
    table = best_of_n_table(s["rm"], s["gold"], s["correct"], list(bc.n_values))
    with open(stage_dir / "samples.jsonl", "w") as f:
        for i, p in enumerate(problems[:8]):
            row = s["rm"][i]
            texts = s["texts"][i * bc.n_max:(i + 1) * bc.n_max]
            f.write(json.dumps({"question": p.question, "best": texts[int(row.argmax())],
                                "worst": texts[int(row.argmin())],
                                "best_rm": float(row.max()), "worst_rm": float(row.min()),
                                "best_gold": float(s["gold"][i, row.argmax()])},
                               ensure_ascii=False) + "\n")
    summary = {
        "stage": STAGE,
        "policy": config.parent,
        "reward_model": bc.reward_stage,
        "heldout_prompts": len(problems),
        "n_max": int(bc.n_max),
        "table": table,
        "wall_seconds": time.perf_counter() - t0,
    }
    write_summary(stage_dir, summary)
    return summary
