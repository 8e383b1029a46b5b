"""Stage "dpo": DPO (or IPO) of the SFT model on the labeler's rankings of SFT samples, the same
comparisons the reward model is trained on (`<workdir>/<dpo.comparisons_stage>/comparisons.jsonl`).

Why: DPO is the most used preference method after PPO. It needs no reward model and no sampling,
so it is the cheapest RL-from-feedback step, and it reads exactly the data the reward model reads,
which makes the two comparable.

Data: every ranking of K responses (best first, ties share a group) gives its pairs (i, j) with
group i < group j: chosen i, rejected j. Each side is the task's chat prompt (left-padded or cut
to `dpo.max_prompt_len`) followed by the response ids as sampled and <|assistant_end|>, cut at
`dpo.max_new_tokens`. The comparisons' own train / held-out split is kept. With
`dpo.source="human"` the pairs come from the shipped human preference sets instead (hh-rlhf
harmless, OASST, the DPO demos; held out by the reward stage's own rule): the control, a
preference signal that says nothing about the task. The frozen SFT model's
sequence log-probs of every pair are computed once before training.

Training: `train.batch_size` pairs per step, drawn without replacement within a step as a pure
function of (seed, step) (exact resume), one compiled `dpo_step` (gpt_jax/train/dpo_core.py) on
the shared loop. Evaluation (step 0, every `train.eval_every`, the end) on the held-out pairs:
implicit-reward accuracy against the labeler's order (`heldout_accuracy`) and against the gold
score where gold differs (`heldout_gold_accuracy`), and the mean margin. At the end, sampled
responses to `dpo.heldout_prompts` held-out task prompts are scored as PPO and FeedME score theirs
(`bon.Sampler.heldout_eval`): `sft` and `dpo` (gold and RM reward, accuracy, KL to SFT), so DPO
has a place on the reward-against-KL plot.

Writes `<workdir>/dpo/`: metrics.jsonl (+ TensorBoard), final/ (the policy, loadable with
checkpoint.load_stage), summary.json.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from gpt_jax.data.step_batches import StepIndexedBatches
from gpt_jax.metrics import write_summary
from gpt_jax.stages import begin_stage

STAGE = "dpo"
SIDE_KEYS = ("tokens", "valid", "response_mask")


def dpo_config(**overrides) -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict({
        # "labeler": <comparisons_stage>/comparisons.jsonl (the labeler's rankings of SFT samples);
        # "human": the shipped human preference sets (the control: not about the task)
        "source": "labeler",
        "comparisons_stage": "reward",  # its comparisons.jsonl: the labeler's rankings
        "human_heldout_fraction": 0.2,  # as the reward stage's (same rule, same held-out pairs)
        "human_max_records": 0,         # per human set (0 = all)
        "beta": 0.1,
        "loss_type": "sigmoid",         # "sigmoid" (DPO) | "ipo"
        "label_smoothing": 0.0,
        "max_prompt_len": 88,
        "max_new_tokens": 128,
        "score_batch": 32,              # pairs per reference / evaluation call
        # the end: sampled responses to held-out prompts, scored as PPO / FeedME score theirs
        # (gold and RM reward, accuracy, KL to SFT); heldout_prompts 0 = none
        "reward_stage": "reward",
        "heldout_prompts": 64,
        "eval_samples": 2,
        "eval_batch": 32,
    })
    cfg.update(overrides)
    return cfg


def pairs_from_rankings(records, tokenizer, task, prompt_len: int, new_tokens: int):
    """({"chosen": side, "rejected": side} numpy arrays, gold [n, 2], identical) of every ranked
    pair of the labeler's comparisons.jsonl records (see `pairs_from_ranked`)."""
    from gpt_jax.tasks import Problem

    return pairs_from_ranked(
        ((tokenizer.render_for_completion(task.prompt_messages(Problem.from_dict(r["problem"]))),
          r["completion_ids"], r["groups"], r["gold"]) for r in records),
        tokenizer, prompt_len, new_tokens)


def human_rankings(config, workdir: str, tokenizer, max_records: int = 0):
    """(train, held-out) rankings of the shipped human preference sets (the reward stage's
    `HUMAN_SETS`, best first; held out by the reward stage's own rule, so the RM's human
    held-out pairs are these): (prompt ids, completion ids, groups, gold = -rank) each;
    `max_records` > 0 keeps the first that many per set."""
    from gpt_jax.data import pipeline, ranking, registry
    from gpt_jax.train.reward import HUMAN_SETS

    root = pipeline.resolve_cache_dir(config, workdir, None)
    train, held = [], []
    for name in HUMAN_SETS:
        builder = registry.prepare(name, data_dir=config.data.dir or None, cache_dir=root,
                                   skip_bad_records=config.data.skip_bad_records)
        records = [r for split in ("train", "heldout") for r in registry.read_records(builder, split)]
        for rec in records[:max_records or None]:
            k = len(rec["responses"])
            row = (tokenizer.render_for_completion(rec["prompt"]),
                   [tokenizer.encode(r) for r in rec["responses"]], list(range(k)),
                   [-float(i) for i in range(k)])
            (held if ranking.held_out(rec["id"], float(config.dpo.human_heldout_fraction))
             else train).append(row)
    return train, held


def pairs_from_ranked(ranked, tokenizer, prompt_len: int, new_tokens: int):
    """({"chosen": side, "rejected": side} numpy arrays, gold [n, 2], identical) of every pair
    (i, j) with group i < group j of each (prompt ids, completion ids, groups, gold) ranking;
    `identical` counts the pairs left out because their two replies are the same once cut at
    `new_tokens` (they carry no preference, only a zero gradient)."""
    from gpt_jax.seq_utils import fit_prompt

    end = tokenizer.token_id("assistant_end")
    rows, gold, identical = [], [], 0
    for prompt_ids, ids, groups, scores in ranked:
        prompt = fit_prompt(prompt_ids, prompt_len)
        for i in range(len(ids)):
            for j in range(len(ids)):
                if groups[i] < groups[j]:
                    chosen = (list(ids[i]) + [end])[:new_tokens]
                    rejected = (list(ids[j]) + [end])[:new_tokens]
                    if chosen == rejected:
                        identical += 1
                        continue
                    rows.append((prompt, chosen, rejected))
                    gold.append((scores[i], scores[j]))
    n, width = len(rows), prompt_len + new_tokens
    sides = {s: {"tokens": np.full((n, width), tokenizer.pad_id, np.int32),
                 "valid": np.zeros((n, width), bool)} for s in ("chosen", "rejected")}
    for r, (prompt, chosen, rejected) in enumerate(rows):
        for s, reply in (("chosen", chosen), ("rejected", rejected)):
            t, v = sides[s]["tokens"], sides[s]["valid"]
            t[r, prompt_len - len(prompt):prompt_len], v[r, prompt_len - len(prompt):prompt_len] = \
                prompt, True
            t[r, prompt_len:prompt_len + len(reply)] = reply
            v[r, prompt_len:prompt_len + len(reply)] = True
    for s in sides.values():
        s["response_mask"] = s["valid"][:, prompt_len:].copy()
    return sides, np.asarray(gold, np.float64).reshape(n, 2), identical


def take(pairs: dict, idx) -> dict:
    return {s: {k: v[idx] for k, v in side.items()} for s, side in pairs.items()}


class PairBatches(StepIndexedBatches):
    """Batch k: `batch_size` pairs drawn without replacement by rng([seed, k]), with their
    reference log-probs."""

    def __init__(self, pairs: dict, ref: np.ndarray, batch_size: int, seed: int):
        self.split, self.seed, self.batch_size = "train", int(seed), int(batch_size)
        self.seq_len = int(pairs["chosen"]["tokens"].shape[1])
        n = len(ref)
        if n < batch_size:
            raise ValueError(f"{n} training pairs < train.batch_size={batch_size}")

        def make_batch(step: int) -> dict:
            idx = np.random.default_rng([self.seed, step]).choice(n, self.batch_size, replace=False)
            return {**take(pairs, idx), "ref_chosen": ref[idx, 0], "ref_rejected": ref[idx, 1]}

        self._serve(make_batch, loader_threads=1, prefetch=2)


def run(config, workdir: str, stage: str = STAGE) -> dict[str, Any]:
    from gpt_jax import sharding as shd
    from gpt_jax.checkpoint import load_stage
    from gpt_jax.data import tasks_data
    from gpt_jax.model import GPT
    from gpt_jax.tokenizer import Tokenizer
    from gpt_jax.train.dpo_core import DPOHyper, make_dpo_step, sequence_logprobs
    from gpt_jax.train.loop import Loop
    from gpt_jax.train.optim import make_optimizer
    from gpt_jax.train.rl_common import fresh_policy_state, policy_state_layout, save_policy

    if config.dpo.source not in ("labeler", "human"):
        raise ValueError(f"dpo.source={config.dpo.source!r}; expected 'labeler' or 'human'")
    stage_dir, done = begin_stage(config, workdir, stage, parent=config.parent)
    if done is not None:
        return done
    t_start = time.perf_counter()
    dc, tcfg = config.dpo, config.train
    tokenizer = Tokenizer.load(str(Path(workdir) / "tokenizer" / "tokenizer.json"))
    task, _ = tasks_data.rl_problems(config, "train", workdir, n=1)
    P, N = int(dc.max_prompt_len), int(dc.max_new_tokens)
    if dc.source == "labeler":
        path = Path(workdir) / dc.comparisons_stage / "comparisons.jsonl"
        if not path.exists():
            raise FileNotFoundError(f"dpo needs the labeler's rankings at {path} (run the "
                                    f"{dc.comparisons_stage!r} stage first)")
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        train, _, train_same = pairs_from_rankings(
            [r for r in records if r["split"] == "train"], tokenizer, task, P, N)
        held, held_gold, held_same = pairs_from_rankings(
            [r for r in records if r["split"] == "heldout"], tokenizer, task, P, N)
    else:  # "human"
        path = "human preference sets"
        ranked_train, ranked_held = human_rankings(config, workdir, tokenizer,
                                                   int(dc.human_max_records))
        train, _, train_same = pairs_from_ranked(ranked_train, tokenizer, P, N)
        held, held_gold, held_same = pairs_from_ranked(ranked_held, tokenizer, P, N)
    model_config, sft_params = load_stage(workdir, config.parent)
    if P + N > model_config.max_seq_len:
        raise ValueError(f"dpo.max_prompt_len + dpo.max_new_tokens = {P + N} exceeds the model "
                         f"context of {model_config.max_seq_len}")
    mesh = shd.mesh_from_config(config.mesh)
    vocab_limit = tokenizer.vocab_size if tokenizer.vocab_size < model_config.vocab_size else 0
    hp = DPOHyper(prompt_len=P, beta=float(dc.beta), loss_type=str(dc.loss_type),
                  label_smoothing=float(dc.label_smoothing), vocab_limit=vocab_limit)
    steps = int(tcfg.total_steps)
    tx, schedule = make_optimizer(config.optim, steps)
    abstract_state, shardings = policy_state_layout(model_config, tx, mesh, config.seed)
    step_fn = jax.jit(make_dpo_step(model_config, tx, hp, mesh),
                      in_shardings=(shardings, None, None), out_shardings=(shardings, None),
                      donate_argnums=0)
    policy = GPT(model_config, mesh=mesh)
    seq_lp = jax.jit(lambda params, side: sequence_logprobs(policy, params, side, hp))
    sft_params = jax.device_put(sft_params, shardings.params)  # on the mesh, as the policy's

    def logprobs(params, pairs) -> np.ndarray:
        """[n, 2] sequence log-probs (chosen, rejected), in fixed-size chunks."""
        n, b = len(pairs["chosen"]["tokens"]), int(dc.score_batch)
        out = np.zeros((n, 2))
        for start in range(0, n, b):
            idx = np.minimum(np.arange(start, start + b), n - 1)  # pad the last chunk
            chunk = take(pairs, idx)
            keep = min(b, n - start)
            out[start:start + keep, 0] = np.asarray(seq_lp(params, chunk["chosen"]))[:keep]
            out[start:start + keep, 1] = np.asarray(seq_lp(params, chunk["rejected"]))[:keep]
        return out

    t_ref = time.perf_counter()
    train_ref, held_ref = logprobs(sft_params, train), logprobs(sft_params, held)
    ref_seconds = time.perf_counter() - t_ref
    differs = held_gold[:, 0] != held_gold[:, 1]
    evals = {}

    def eval_hook(params, step: int) -> dict[str, float]:
        lp = logprobs(params, held)
        margin = float(dc.beta) * ((lp[:, 0] - held_ref[:, 0]) - (lp[:, 1] - held_ref[:, 1]))
        gold_wins = held_gold[differs, 0] > held_gold[differs, 1]
        out = {"heldout_accuracy": float((margin > 0).mean()) if len(margin) else 0.0,
               "heldout_gold_accuracy": float(((margin[differs] > 0) == gold_wins).mean())
               if differs.any() else 0.0,
               "heldout_margin": float(margin.mean()) if len(margin) else 0.0}
        evals["first" if step == 0 else "last"] = out
        return {f"eval_{k}": v for k, v in out.items()}

    def train_step(state, batch, rng):
        state, metrics = step_fn(state, batch, rng)
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        return state, {**metrics, "lr": float(schedule(int(state.step) - 1))}

    source = PairBatches(train, train_ref, int(tcfg.batch_size), config.seed)
    loop = Loop(
        stage_dir=str(stage_dir), train_cfg=tcfg, train_step=train_step, train_iter=source,
        put_batch=lambda b: b, abstract_state=abstract_state, state_shardings=shardings,
        eval_hook=eval_hook, meta={"stage": stage}, desc=stage, eval_at_start=True,
        postfix=lambda r: {"loss": f"{r['loss']:.4f}", "acc": f"{r['reward_accuracy']:.2f}"})

    result = loop.run(lambda: fresh_policy_state(sft_params, tx, shardings),
                      jax.random.key(config.seed))
    last = evals.get("last") or {k.removeprefix("eval_"): v
                                 for k, v in eval_hook(result.state.params, steps).items()}
    save_policy(stage_dir, result.state.params, stage)
    sampled, eval_seconds = {}, 0.0
    if int(dc.heldout_prompts) > 0:
        from gpt_jax.train.bon import Sampler

        t_eval = time.perf_counter()
        sampler = Sampler(config, workdir, config.parent, dc.reward_stage, P, N, 1.0,
                          int(dc.eval_batch))
        sft_eval, dpo_eval = sampler.heldout_eval(config, workdir, task, result.state.params,
                                                  dc.heldout_prompts, dc.eval_batch,
                                                  dc.eval_samples)
        sampled = {"sft": sft_eval, "dpo": dpo_eval, **{k: dpo_eval[k] for k in (
            "gold_reward", "rm_reward", "accuracy", "kl")}}
        eval_seconds = time.perf_counter() - t_eval
    summary = {
        "stage": stage, "parent": config.parent, "source": str(dc.source),
        "comparisons": str(path),
        "loss_type": hp.loss_type, "beta": hp.beta, "label_smoothing": hp.label_smoothing,
        "train_pairs": int(len(train_ref)), "heldout_pairs": int(len(held_ref)),
        "heldout_gold_pairs": int(differs.sum()), "identical_pairs_left_out": train_same + held_same,
        "steps": steps,
        "final_train_loss": result.last_train.get("loss"),
        "final_train_reward_accuracy": result.last_train.get("reward_accuracy"),
        **last,
        **sampled,
        "reference_seconds": ref_seconds,
        "eval_seconds": eval_seconds,
        "wall_seconds": time.perf_counter() - t_start,
    }
    write_summary(stage_dir, summary)
    return summary
