"""Stage "compare": the base, SFT, PPO and FeedME models side by side on the same held-out prompts.

Why: each stage reports its own metric on its own terms; this stage asks every model the same
`config.compare.n_prompts` held-out task questions and scores all answers with the same judges,
so the recipe's effect (base -> SFT -> RLHF) reads off one table.

How each model is asked:
- base (the "pretrain" stage): a few-shot completion prompt, `few_shot` solved problems from the
  task's TRAIN split as "Question: ...\\nAnswer: <solution>\\n\\n", then "Question: q\\nAnswer:";
  the completion stops at a blank line (or a new "Question:"), as in `chat.py`'s completion mode
  (the oldest demonstrations are dropped for a question whose prompt would not fit the context);
- chat models ("sft", "ppo", "feedme"): the task's chat prompt through the chat template, the reply
  ending at <|assistant_end|> (the same prompts and stops as `sft.generate_replies`).

Per model, over the greedy answers: `gold_reward` (mean `labeler.gold_score`), `accuracy` (mean
`labeler.is_correct`), `rm_reward` (mean reward-model score of the answer as the assistant reply to
the task's chat prompt; None without a reward stage) and `response_length` (mean generated tokens,
stop token excluded). Over `samples_per_prompt` temperature-1 samples (no top-k/top-p) for each
of the first `sample_prompts` prompts: `distinct_1` / `distinct_2` (unique / total token n-grams among one prompt's samples, mean over
prompts: how different the samples are from each other) and `sample_entropy` (mean over all sampled
tokens, stop token included, of -log p(token): a Monte-Carlo estimate of the per-token entropy).

A model whose stage has no summary.json or no checkpoint is skipped and listed under "missing"
(the reason under "missing_why").
Writes `<workdir>/compare/summary.json` and `<workdir>/compare/samples.jsonl` (one row per prompt:
{"id", "prompt", "reference", "answers": {model: {"text", "gold", "rm"}}}).
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
MODEL_STAGES = {"base": "pretrain", "sft": "sft", "ppo": "ppo", "feedme": "feedme"}
BASE_STOP_STRINGS = ("\n\n", "\nQuestion:")


def compare_config(**overrides) -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict({
        "models": "base,sft,ppo,feedme",  # names from MODEL_STAGES, in table order
        "n_prompts": 32,            # held-out task prompts every model answers
        "samples_per_prompt": 4,    # temperature-1 samples per prompt (distinct-n, entropy)
        "sample_prompts": 0,        # sample on the first this-many prompts (0 = all n_prompts)
        "temperature": 1.0,
        "max_new_tokens": 48,
        "few_shot": 3,              # demonstrations in the base model's completion prompt
        "seed": 0,                  # sampling seed (the same for every model)
        "gen_batch": 256,           # rows per generate() call
        "score_batch": 64,          # rows per reward-model call
    })
    cfg.update(overrides)
    return cfg


# -- prompts ---------------------------------------------------------------------------------------
def few_shot_prompt(demos, question: str) -> str:
    """The base model's completion prompt: solved demonstrations, then the open question."""
    shots = "".join(f"Question: {d.question}\nAnswer: {d.solution}\n\n" for d in demos)
    return f"{shots}Question: {question}\nAnswer:"


def base_prompt_ids(tokenizer, demos, question: str, room: int) -> list[int]:
    """eos + the few-shot prompt (pretraining documents are eos-separated), dropping the first
    demonstrations until it fits in `room` tokens."""
    demos = list(demos)
    while True:
        ids = [tokenizer.eos_id, *tokenizer.encode(few_shot_prompt(demos, question))]
        if len(ids) <= room or not demos:
            return ids[-room:] if len(ids) > room else ids
        demos = demos[1:]


def chat_prompt_ids(tokenizer, task, problem, room: int) -> list[int]:
    ids = tokenizer.render_for_completion(task.prompt_messages(problem))
    return ids if len(ids) <= room else [ids[0]] + ids[len(ids) - room + 1:]


# -- generation ------------------------------------------------------------------------------------
def cut_at_stops(text: str, stop_strings) -> str:
    hits = [text.find(s) for s in stop_strings if s in text]
    return text[:min(hits)] if hits else text


def complete(params, model_config, tokenizer, prompts, *, stop_ids, stop_strings=(),
             temperature: float, max_new_tokens: int, seed: int, batch_rows: int):
    """(texts, response ids, per-token log-probs) for lists of prompt ids; temperature 0 = greedy.

    Texts are without the stop token or stop string (and stripped for completions); ids and
    log-probs cover every generated token up to and including the stop.
    """
    from gpt_jax.sampling import SamplingConfig, generate
    from gpt_jax.train.sft import vocab_limit_processor

    processor = (vocab_limit_processor(tokenizer.vocab_size)
                 if model_config.vocab_size > tokenizer.vocab_size else None)
    texts, ids, logprobs = [], [], []
    for start in range(0, len(prompts), batch_rows):
        chunk = prompts[start:start + batch_rows]
        sampling = SamplingConfig(temperature=temperature, max_new_tokens=max_new_tokens,
                                  stop_ids=tuple(stop_ids), stop_strings=tuple(stop_strings),
                                  seed=seed + start)
        gen = generate(params, model_config, chunk, sampling, logit_processor=processor,
                       pad_id=tokenizer.pad_id, tokenizer=tokenizer)
        for i in range(len(chunk)):
            row = gen.row(i)
            text = tokenizer.decode([t for t in row if t not in stop_ids])
            if stop_strings:
                text = cut_at_stops(text, stop_strings).strip()
            texts.append(text)
            ids.append(row)
            logprobs.append(np.asarray(gen.logprobs[i, : gen.lengths[i]], np.float64))
    return texts, ids, logprobs


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


def model_prompts(name: str, tokenizer, task, problems, demos, room: int):
    """(prompt ids per problem, stop kwargs for `complete`): few-shot completion for the base
    model, the chat template for the others."""
    if name == "base":
        prompts = [base_prompt_ids(tokenizer, demos, p.question, room) for p in problems]
        return prompts, {"stop_ids": (tokenizer.eos_id,), "stop_strings": BASE_STOP_STRINGS}
    prompts = [chat_prompt_ids(tokenizer, task, p, room) for p in problems]
    return prompts, {"stop_ids": (tokenizer.token_id("assistant_end"), tokenizer.eos_id)}


def load_model(workdir: str, stage: str):
    """(model config, params) of the stage's checkpoint, or why it cannot be loaded (a str)."""
    from gpt_jax.checkpoint import load_stage

    try:
        return load_stage(workdir, stage)
    except FileNotFoundError as e:
        return f"no checkpoint: {e}"


def answer_model(name, model_config, params, tokenizer, task, problems, demos,
                 c) -> dict[str, Any]:
    """Greedy answers and temperature-1 samples of one model."""
    room = model_config.max_seq_len - int(c.max_new_tokens)
    prompts, stops = model_prompts(name, tokenizer, task, problems, demos, room)
    common = dict(max_new_tokens=int(c.max_new_tokens), batch_rows=int(c.gen_batch), **stops)
    texts, ids, _ = complete(params, model_config, tokenizer, prompts, temperature=0.0,
                             seed=int(c.seed), **common)
    s, sampled = int(c.samples_per_prompt), int(c.sample_prompts) or len(prompts)
    _, sample_ids, sample_logprobs = complete(
        params, model_config, tokenizer, [p for p in prompts[:sampled] for _ in range(s)],
        temperature=float(c.temperature), seed=int(c.seed), **common)
    stop_ids = set(stops["stop_ids"])
    all_logprobs = np.concatenate(sample_logprobs) if sample_logprobs else np.zeros(0)
    return {
        "texts": texts,
        "response_length": float(np.mean([len([t for t in r if t not in stop_ids])
                                          for r in ids])),
        **diversity(sample_ids, s, stop_ids),
        "sample_entropy": float(-all_logprobs.mean()) if all_logprobs.size else 0.0,
    }


def run(config, workdir: str) -> dict[str, Any]:
    from gpt_jax import labeler
    from gpt_jax.data import tasks_data
    from gpt_jax.tokenizer import Tokenizer

    stage_dir, done = begin_stage(config, workdir, STAGE)
    if done is not None:
        return done
    t_start = time.perf_counter()
    c = config.compare
    tokenizer = Tokenizer.load(str(Path(workdir) / "tokenizer" / "tokenizer.json"))
    task, problems = tasks_data.task_problems(config, "heldout", workdir, n=int(c.n_prompts))
    _, demos = tasks_data.task_problems(config, "train", workdir, n=max(1, int(c.few_shot)))
    demos = demos[: int(c.few_shot)]
    present, missing = available_models(workdir, [m.strip() for m in c.models.split(",")
                                                  if m.strip()])
    score_rm = rm_scorer(workdir, tokenizer, task, int(c.score_batch))

    models, answers, seconds = {}, {}, {}
    for name, stage in present.items():
        t0 = time.perf_counter()
        loaded = load_model(workdir, stage)
        if isinstance(loaded, str):
            missing[name] = loaded
            continue
        out = answer_model(name, *loaded, tokenizer, task, problems, demos, c)
        texts = out.pop("texts")
        gold = [labeler.gold_score(p, t) for p, t in zip(problems, texts)]
        rm = score_rm(problems, texts) if score_rm is not None else None
        rm_each = [None] * len(texts) if rm is None else [float(r) for r in rm]
        answers[name] = [{"text": t, "gold": g, "rm": r} for t, g, r in zip(texts, gold, rm_each)]
        models[name] = {
            "gold_reward": float(np.mean(gold)),
            "accuracy": float(np.mean([labeler.is_correct(p, t) for p, t in zip(problems, texts)])),
            "rm_reward": None if rm is None else float(np.mean(rm)),
            **out,
        }
        seconds[name] = time.perf_counter() - t0
        print(f"compare: {name}: {models[name]} ({seconds[name]:.1f} s)", flush=True)

    missing = {name: missing[name] for name in MODEL_STAGES if name in missing}  # table order
    for name, why in missing.items():
        print(f"compare: skipped {name}: {why}", flush=True)
    with open(stage_dir / "samples.jsonl", "w") as f:
        for i, p in enumerate(problems):
            row = {"id": p.id, "prompt": p.question, "reference": p.answer,
                   "answers": {name: answers[name][i] for name in answers}}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    summary = {
        "stage": STAGE,
        "task": task.name,
        "prompts": len(problems),
        "samples_per_prompt": int(c.samples_per_prompt),
        "sample_prompts": min(int(c.sample_prompts) or len(problems), len(problems)),
        "few_shot": len(demos),
        "models": models,
        "missing": list(missing),
        "missing_why": missing,
        "has_reward_model": score_rm is not None,
        "seconds_by_model": seconds,
        "wall_seconds": time.perf_counter() - t_start,
    }
    write_summary(stage_dir, summary)
    return summary
