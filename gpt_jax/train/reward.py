"""Stage 4, the reward model from K-wise rankings (InstructGPT).

Model: `heads.RewardModel`, the SFT trunk + a Dense(1) head on the final hidden state of the end
token of prompt + response. Loss: `heads.ranking_loss`, for each prompt the mean of
-log sigmoid(r_w - r_l) over its C(K,2) ranked pairs from ONE forward pass over its K responses
(batch [P, K, T] flattened to [P*K, T]), then the mean over prompts.

Data, mixed by `config.reward.weights`:
- "labeler": K completions per task prompt sampled from the SFT model (KV-cache engine,
  gpt_jax.sampling.generate), ranked by the simulated labeler (gpt_jax/labeler.py; 73% pairwise
  agreement with gold by default). Train and held-out prompts come from the task's disjoint splits.
  Sampled once and kept in <stage>/comparisons.jsonl (a resumed run reuses them).
- the shipped human rankings: hh-rlhf harmless, OASST English sibling replies (K-wise), the DPO
  demos en/zh; each split train/held-out by sha256 of the record id (`human_heldout_fraction`).

After training, the head bias is shifted so that held-out SFT demonstrations (task demonstrations +
last replies of held-out SFT conversations) score 0 on average; the shifted params are saved under
<stage>/final (load with `load_reward_model`), the offset is in summary.json.

summary.json: held-out pairwise accuracy on labeler data against the noise-free gold order (and
against the noisy labeler), on each human set against the human order, each next to the "prefer
the longer response" baseline on the same pairs, with pair counts.

For PPO: `score(params, model_config, tokens, lengths=None, valid=None) -> [N]` (pure, jit-able).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gpt_jax import sharding as shd
from gpt_jax.checkpoint import Checkpointer, load_stage, restore_params
from gpt_jax.data import ranking as R
from gpt_jax.flops import train_flops_per_token
from gpt_jax.heads import RewardModel, ranking_loss, score
from gpt_jax.metrics import write_jsonl, write_summary
from gpt_jax.stages import begin_stage
from gpt_jax.model import GPTConfig
from gpt_jax.train.loop import Loop
from gpt_jax.train.pretrain import build
from gpt_jax.train.state import state_from_params

STAGE = "reward"
HUMAN_SETS = ("hh_rlhf_harmless_test", "oasst_en_trees", "dpo_en_demo", "dpo_zh_demo")

__all__ = ["score", "rm_loss_fn", "reward_config", "run", "load_reward_model", "pairwise_accuracy"]


def reward_config(**overrides) -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict({
        "k": 4,                      # responses per prompt (2-9) ranked by the labeler
        # True: one of the k is the task's reference reply, k - 1 are policy samples. While the
        # policy is rarely right (a small model early on) its samples are all wrong and tie under
        # a correctness-first gold, so without the reference the RM sees no right answer at all.
        "with_reference": True,
        "train_prompts": 256,        # task prompts sampled for training comparisons
        "heldout_prompts": 64,       # held-out task prompts (accuracy vs gold)
        "max_new_tokens": 48,
        "temperature": 1.0,
        "gen_batch": 256,            # rows per generate() call
        "labeler_agreement": 0.73,   # target labeler-gold pairwise agreement (calibrated flips)
        "labeler_flip_rate": -1.0,   # >= 0: use this flip rate instead of the calibration
        "weights": {"labeler": 0.6, "hh_rlhf_harmless_test": 0.2, "oasst_en_trees": 0.1,
                    "dpo_en_demo": 0.05, "dpo_zh_demo": 0.05},
        "human_heldout_fraction": 0.2,
        "human_eval_max_prompts": 200,  # per human set (held-out accuracy cost)
        "eval_k": 10,                # max responses per prompt at evaluation
        "bias_demos": 128,           # SFT demonstrations averaged for the bias offset
        "score_batch": 64,           # rows per scoring call
    })
    cfg.update(overrides)
    return cfg


def rm_loss_fn(model: RewardModel, z_loss: float = 0.0):
    """loss_fn(params, batch, rng) over a [P, K, T] ranking batch (see gpt_jax/data/ranking.py)."""
    del z_loss

    def loss_fn(params, batch, rng):
        tokens = batch["tokens"]
        p, k, t = tokens.shape
        valid = jnp.arange(t)[None, None, :] <= batch["eos_index"][..., None]
        rewards = model.apply({"params": params}, tokens.reshape(p * k, t),
                              valid.reshape(p * k, t), deterministic=rng is None,
                              rngs=None if rng is None else {"dropout": rng})
        return ranking_loss(rewards.reshape(p, k), batch["groups"])

    return loss_fn


# -- data -----------------------------------------------------------------------------------------
def sample_comparisons(params, model_config, tokenizer, task, problems, k: int, rcfg, labeler,
                       seed: int) -> list[dict]:
    """K completions per problem (K - 1 samples + the reference reply with
    `rcfg.with_reference`, else K samples), ranked by the labeler: JSON-able records."""
    from gpt_jax.data import chat_template
    from gpt_jax.train.sft import generate_replies

    n = k - 1 if rcfg.with_reference else k
    convs = [task.prompt_messages(p) for p in problems for _ in range(n)]
    texts, ids = generate_replies(params, model_config, tokenizer, convs, rcfg.max_new_tokens,
                                  greedy=False, temperature=rcfg.temperature, seed=seed,
                                  batch_rows=rcfg.gen_batch)
    out = []
    for j, p in enumerate(problems):
        comp, comp_ids = texts[j * n:(j + 1) * n], ids[j * n:(j + 1) * n]
        if n < k:  # the reference reply as the tokens a policy would have written
            ref = chat_template.assistant_ids(tokenizer, task.demonstration(p)[-1]["content"])
            comp, comp_ids = comp + [p.solution], comp_ids + [ref]
        r = labeler.rank(p, comp)
        out.append({"problem": p.to_dict(), "completions": [comp[i] for i in r.order],
                    "completion_ids": [comp_ids[i] for i in r.order], "groups": r.groups,
                    "gold": r.gold})
    return out


def comparison_examples(records, tokenizer, task, seq_len: int) -> list[R.RankingExample]:
    from gpt_jax.tasks import Problem

    out = []
    for rec in records:
        p = Problem.from_dict(rec["problem"])
        out.append(R.encode_ranking(tokenizer, task.prompt_messages(p), rec["completions"], seq_len,
                                    groups=rec["groups"], source="labeler",
                                    response_ids=rec["completion_ids"], meta={"gold": rec["gold"]}))
    return out


def human_examples(config, tokenizer, workdir, seq_len: int):
    """{set: (train examples, held-out examples)} for the human sets with a positive weight or
    evaluated (all HUMAN_SETS)."""
    from gpt_jax.data import pipeline, registry

    d, rcfg = config.data, config.reward
    root = pipeline.resolve_cache_dir(config, workdir, None)
    out = {}
    for name in HUMAN_SETS:
        builder = registry.prepare(name, data_dir=d.dir or None, cache_dir=root,
                                   skip_bad_records=d.skip_bad_records)
        train, held = [], []
        for split in ("train", "heldout"):
            for rec in registry.read_records(builder, split):
                ex = R.encode_ranking(tokenizer, rec["prompt"], rec["responses"], seq_len,
                                      source=name)
                (held if R.held_out(rec["id"], rcfg.human_heldout_fraction) else train).append(ex)
        out[name] = (train, held)
    return out


# -- evaluation -----------------------------------------------------------------------------------
def make_scorer(model_config, mesh, rows: int, seq_len: int):
    """scores(params, examples) -> list of [n_responses] arrays, in fixed [rows, T] chunks."""
    fn = jax.jit(lambda params, tokens, eos: score(
        params, model_config, tokens, valid=jnp.arange(tokens.shape[1])[None] <= eos[:, None]))

    def scores(params, examples):
        flat = [(e, i) for e, ex in enumerate(examples) for i in range(len(ex.ids))]
        values = np.zeros(len(flat), np.float32)
        for start in range(0, len(flat), rows):
            chunk = flat[start:start + rows]
            tokens = np.zeros((rows, seq_len), np.int32)
            eos = np.zeros(rows, np.int32)
            for r, (e, i) in enumerate(chunk):
                ids = examples[e].ids[i][:seq_len]
                tokens[r, : len(ids)], eos[r] = ids, len(ids) - 1
            values[start:start + len(chunk)] = np.asarray(fn(params, tokens, eos))[: len(chunk)]
        out, pos = [], 0
        for ex in examples:
            out.append(values[pos:pos + len(ex.ids)])
            pos += len(ex.ids)
        return out

    return scores


def pairwise_accuracy(scores, truths, lengths) -> dict[str, float]:
    """Over every pair with different truth values: the fraction the scores order like the truth
    (score ties count 1/2), and the same for "prefer the longer response" (length ties 1/2)."""
    acc = base = 0.0
    n = 0
    for s, g, ln in zip(scores, truths, lengths):
        for i in range(len(g)):
            for j in range(i + 1, len(g)):
                if g[i] == g[j]:
                    continue
                sign = 1.0 if g[i] > g[j] else -1.0
                ds, dl = sign * (s[i] - s[j]), sign * (ln[i] - ln[j])
                acc += 1.0 if ds > 0 else 0.5 if ds == 0 else 0.0
                base += 1.0 if dl > 0 else 0.5 if dl == 0 else 0.0
                n += 1
    return {"accuracy": acc / max(n, 1), "length_baseline": base / max(n, 1), "pairs": n}


def _order_truth(ex: R.RankingExample) -> list[float]:
    """The stored order as a truth value (best first = highest), ties by group equal."""
    rank = {}
    for g in ex.groups:
        rank.setdefault(g, len(ex.groups) - len(rank))
    return [float(rank[g]) for g in ex.groups]


def evaluate_sets(params, scorer, labeler_held, human_held, max_prompts: int) -> dict[str, Any]:
    out = {}
    if labeler_held:
        s = scorer(params, labeler_held)
        lens = [ex.response_lengths for ex in labeler_held]
        out["labeler_vs_gold"] = pairwise_accuracy(s, [ex.meta["gold"] for ex in labeler_held], lens)
        out["labeler_vs_labeler"] = pairwise_accuracy(s, [_order_truth(ex) for ex in labeler_held],
                                                      lens)
    for name, held in human_held.items():
        held = held[:max_prompts]
        s = scorer(params, held)
        out[name] = pairwise_accuracy(s, [_order_truth(ex) for ex in held],
                                      [ex.response_lengths for ex in held])
    return out


# -- the stage ------------------------------------------------------------------------------------
def _load_or_sample(stage_dir, params, model_config, tokenizer, task, config, k, labeler):
    path = stage_dir / "comparisons.jsonl"
    if path.exists():
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return {s: [r for r in rows if r["split"] == s] for s in ("train", "heldout")}, 0.0
    from gpt_jax.data import tasks_data

    rcfg = config.reward
    t0 = time.perf_counter()
    out = {}
    for split, n in (("train", rcfg.train_prompts), ("heldout", rcfg.heldout_prompts)):
        _, problems = tasks_data.rl_problems(config, split, str(stage_dir.parent), n=n)
        seed = config.seed * 7919 + (0 if split == "train" else 1_000_000)
        out[split] = sample_comparisons(params, model_config, tokenizer, task, problems, k, rcfg,
                                        labeler, seed)
        for r in out[split]:
            r["split"] = split
    write_jsonl(path, [r for s in ("train", "heldout") for r in out[s]])
    return out, time.perf_counter() - t0


def run(config, workdir: str, stage: str = STAGE) -> dict[str, Any]:
    """`stage`: the directory (a second RM beside `reward`, e.g. the weak one of recipe_seeds)."""
    from gpt_jax import labeler as labeler_lib
    from gpt_jax.data import tasks_data
    from gpt_jax.tokenizer import Tokenizer

    stage_dir, done = begin_stage(config, workdir, stage, parent=config.parent)
    if done is not None:
        return done
    t_start = time.perf_counter()
    rcfg, tcfg = config.reward, config.train
    k, T = int(rcfg.k), int(tcfg.seq_len)
    if not 2 <= k <= 9:
        raise ValueError(f"reward.k={k}; expected 2..9")
    tokenizer = Tokenizer.load(str(Path(workdir) / "tokenizer" / "tokenizer.json"))
    mesh = shd.mesh_from_config(config.mesh)
    built = build(config, mesh, rm_loss_fn, model_cls=RewardModel)
    model_config = built.model_config
    _, sft_params = load_stage(workdir, config.parent)

    # (a) labeler comparisons on SFT samples, (b) human rankings.
    task = tasks_data.make_task(config.tasks, config, workdir)
    lab = labeler_lib.Labeler(
        flip_rate=None if rcfg.labeler_flip_rate < 0 else rcfg.labeler_flip_rate,
        agreement=rcfg.labeler_agreement, seed=config.seed)
    comparisons, sample_seconds = _load_or_sample(stage_dir, sft_params, model_config, tokenizer,
                                                  task, config, k, lab)
    agree = [labeler_lib.pairwise_agreement(list(range(len(r["gold"]))), r["gold"])
             for s in comparisons.values() for r in s]
    labeler_train = comparison_examples(comparisons["train"], tokenizer, task, T)
    labeler_held = comparison_examples(comparisons["heldout"], tokenizer, task, T)
    human = human_examples(config, tokenizer, workdir, T)
    weights = {n: float(w) for n, w in dict(rcfg.weights).items() if float(w) > 0}
    train_sets = {"labeler": labeler_train, **{n: human[n][0] for n in human}}
    unknown = set(weights) - set(train_sets)
    if unknown:
        raise KeyError(f"reward.weights has unknown sources {sorted(unknown)}; known: "
                       f"{sorted(train_sets)}")
    train_iter = R.RankingIterator(train_sets, weights, batch_size=tcfg.batch_size, k=k,
                                   seq_len=T, seed=config.seed, pad_id=tokenizer.pad_id)

    def make_eval_iter():
        batches = [R.stack_examples(labeler_held[i:i + tcfg.batch_size], k, T, tokenizer.pad_id)
                   for i in range(0, len(labeler_held) - tcfg.batch_size + 1, tcfg.batch_size)]
        return iter(batches * (1 + tcfg.eval_batches // max(len(batches), 1)))

    scorer = make_scorer(model_config, mesh, int(rcfg.score_batch), T)

    def hook(params, step):
        ev = evaluate_sets(params, scorer, labeler_held, {}, 0)
        return {"heldout_gold_accuracy": ev["labeler_vs_gold"]["accuracy"]}

    def put(batch):
        return jax.device_put({key: np.asarray(v) for key, v in batch.items()},
                              built.batch_sharding)

    def init_state():
        head = nn.unbox(built.init_params(jax.random.key(config.seed))["head"])
        return state_from_params({"trunk": sft_params, "head": head}, built.tx,
                                 built.state_shardings)

    tokens_per_step = tcfg.batch_size * k * T
    loop = Loop(
        stage_dir=str(stage_dir), train_cfg=tcfg, train_step=built.train_step,
        train_iter=train_iter, put_batch=put, abstract_state=built.abstract_state,
        state_shardings=built.state_shardings, eval_step=built.eval_step,
        make_eval_iter=make_eval_iter if len(labeler_held) >= tcfg.batch_size else None,
        eval_hook=hook, tokens_per_step=tokens_per_step,
        flops_per_step=train_flops_per_token(built.model_config, T) * tokens_per_step,
        peak_flops=tcfg.peak_flops,
        meta={"stage": stage, "model": config.model.to_dict()}, desc=stage)
    result = loop.run(init_state, jax.random.key(config.seed))
    params = result.state.params
    t_eval = time.perf_counter()
    metrics = evaluate_sets(params, scorer, labeler_held, {n: h for n, (_, h) in human.items()},
                            int(rcfg.human_eval_max_prompts))

    # Bias: SFT demonstrations score 0 on average.
    demos = tasks_data.sft_demonstrations(config, workdir, int(rcfg.bias_demos))
    demo_examples = [R.encode_ranking(tokenizer, msgs, [reply], T) for msgs, reply in demos]
    demo_scores = np.concatenate(scorer(params, demo_examples))
    offset = float(demo_scores.mean())
    params = jax.device_get(params)
    params["head"]["bias"] = params["head"]["bias"] - np.float32(offset)
    final = Checkpointer(stage_dir / "final", max_to_keep=1, async_save=False)
    final.save(0, {"params": params}, meta={"stage": stage, "bias_offset": offset})
    final.close()

    summary = {
        "stage": STAGE,
        "parent": config.parent,
        "k": k,
        "final_train_loss": result.last_train.get("loss"),
        "final_train_accuracy": result.last_train.get("accuracy"),
        "heldout_labeler_loss": result.last_eval.get("eval_loss"),
        "heldout_accuracy": metrics,
        "labeler_gold_agreement": sum(a for a, _ in agree) / max(sum(t for _, t in agree), 1),
        "labeler_gold_pairs": sum(t for _, t in agree),
        "labeler_flip_rate": lab.flip_rate_for(k),
        "comparisons": {s: len(v) for s, v in comparisons.items()},
        "human_prompts": {n: {"train": len(a), "heldout": len(b)} for n, (a, b) in human.items()},
        "weights": weights,
        "bias_offset": offset,
        "bias_demos": len(demo_examples),
        "demo_score_std": float(demo_scores.std()),
        "sample_seconds": sample_seconds,
        "final_eval_seconds": time.perf_counter() - t_eval,
        "tokens_per_sec": result.tokens_per_sec,
        "compile_seconds": result.compile_seconds,
        "wall_seconds": time.perf_counter() - t_start,
        "steps": tcfg.total_steps,
    }
    write_summary(stage_dir, summary)
    return summary


def load_reward_model(workdir: str, stage: str = STAGE) -> tuple[GPTConfig, dict]:
    """(model config, params with the bias offset applied) of `<workdir>/<stage>/final`."""
    stage_dir = Path(workdir) / stage
    if not (stage_dir / "final").exists():
        raise FileNotFoundError(f"{stage_dir / 'final'} not found: has the reward stage run in "
                                f"{workdir}?")
    cfg = json.loads((stage_dir / "config.json").read_text())
    model_config = GPTConfig.from_config(cfg["model"])
    abstract = jax.eval_shape(lambda: nn.unbox(RewardModel(model_config).init(
        jax.random.key(0), jnp.zeros((1, 1), jnp.int32))["params"]))
    return model_config, restore_params(stage_dir / "final", abstract)
