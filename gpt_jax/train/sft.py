"""Stage 3, supervised fine-tuning: next-token loss on assistant tokens of chat conversations.

Data: the shipped SFT conversation sets (config.data.sft_weights) + the verifiable task's
chain-of-thought demonstrations (config.tasks.demo_weight), rendered with the chat template and
packed into (B, T+1) rows with segment ids and per-segment positions (gpt_jax/data/tasks_data.py).

Loss: `pretrain.lm_loss_fn` as is: cross entropy on targets where loss_mask[:, 1:] == 1 (assistant
text and its end token), divided by the number of such tokens in the batch (`masked_lm_loss` below is
the same function, named for the tests). Packed conversations do not attend to each other.

Eval (every train.eval_every): the held-out masked loss (same mixture, held-out split), greedy
replies to fixed prompts written to <stage>/samples.jsonl, and the task's held-out accuracy and mean
gold score over `config.samples.eval_problems` greedy completions.

Initialised from `<workdir>/<config.parent>` (the pretrain checkpoint); the model config must equal
the parent's. Writes `<workdir>/sft/summary.json`.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gpt_jax import sharding as shd
from gpt_jax.checkpoint import load_stage
from gpt_jax.flops import train_flops_per_token
from gpt_jax.metrics import write_summary
from gpt_jax.seq_utils import fit_prompt
from gpt_jax.stages import begin_stage
from gpt_jax.train.losses import cross_entropy
from gpt_jax.train.loop import Loop
from gpt_jax.train.pretrain import build, lm_loss_fn
from gpt_jax.train.state import state_from_params

STAGE = "sft"
sft_loss_fn = lm_loss_fn  # masked next-token loss; honours loss_mask / segment_ids / positions

DEFAULT_PROMPTS = (
    "Hello! Who are you?",
    "Give three tips for staying healthy.",
    "Write a short poem about the sea.",
    "请介绍一下你自己。",
)


def masked_lm_loss(logits, targets, mask):
    """sum(mask * -log p(target)) / sum(mask): the SFT loss on [B, T] logits/targets/mask."""
    return cross_entropy(logits, targets, mask)[0]


def samples_config(**overrides) -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict({
        "prompts": list(DEFAULT_PROMPTS),  # user messages replied to (greedy) at each eval
        "max_new_tokens": 48,
        "eval_problems": 32,               # held-out task problems completed greedily at each eval
    })
    cfg.update(overrides)
    return cfg


@functools.lru_cache(maxsize=None)
def vocab_limit_processor(n: int):
    """Logit processor forbidding ids >= n (a model vocab padded beyond the tokenizer's); cached
    so the same function object (a static jit argument) is reused and nothing recompiles."""

    def processor(logits, state):
        del state
        return jnp.where(jnp.arange(logits.shape[-1]) < n, logits, -jnp.inf)

    return processor


def generate_replies(params, model_config, tokenizer, conversations, max_new_tokens: int,
                     greedy: bool = True, temperature: float = 1.0, seed: int = 0,
                     batch_rows: int = 256):
    """Sampled assistant replies (text, ids) for a list of conversations (KV-cache engine)."""
    from gpt_jax.sampling import SamplingConfig, generate

    stop = (tokenizer.token_id("assistant_end"), tokenizer.eos_id)
    texts, ids = [], []
    for start in range(0, len(conversations), batch_rows):
        chunk = conversations[start:start + batch_rows]
        prompts = [tokenizer.render_for_completion(c) for c in chunk]
        room = model_config.max_seq_len - max_new_tokens
        prompts = [fit_prompt(p, room) for p in prompts]
        sampling = SamplingConfig(temperature=0.0 if greedy else temperature,
                                  max_new_tokens=max_new_tokens, stop_ids=stop,
                                  seed=seed + start)
        processor = (vocab_limit_processor(tokenizer.vocab_size)
                     if model_config.vocab_size > tokenizer.vocab_size else None)
        gen = generate(params, model_config, prompts, sampling, logit_processor=processor,
                       pad_id=tokenizer.pad_id)
        for i in range(len(chunk)):
            row = [t for t in gen.row(i) if t not in stop]
            ids.append(row)
            texts.append(tokenizer.decode(row))
    return texts, ids


def make_eval_hook(config, stage_dir: Path, tokenizer, model_config, task, problems):
    from gpt_jax import labeler

    s = config.samples

    def hook(params, step: int) -> dict:
        t0 = time.perf_counter()
        convs = [[{"role": "user", "content": p}] for p in s.prompts]
        convs += [task.prompt_messages(p) for p in problems]
        texts, _ = generate_replies(params, model_config, tokenizer, convs, s.max_new_tokens)
        n = len(s.prompts)
        with open(stage_dir / "samples.jsonl", "a") as f:
            for conv, text in zip(convs[: n + 2], texts[: n + 2]):
                f.write(json.dumps({"step": step, "prompt": conv[-1]["content"], "reply": text},
                                   ensure_ascii=False) + "\n")
        gold = [labeler.gold_score(p, t) for p, t in zip(problems, texts[n:])]
        correct = [labeler.is_correct(p, t) for p, t in zip(problems, texts[n:])]
        return {"task_accuracy": float(np.mean(correct)) if correct else 0.0,
                "task_gold_score": float(np.mean(gold)) if gold else 0.0,
                "sample_seconds": time.perf_counter() - t0}

    return hook


@dataclasses.dataclass(frozen=True)
class TrainedTree:
    """What a stage trains when it is not the model's params as they are (LoRA: {"base",
    "adapter"} with the base frozen): how to build, fill and read that tree."""

    loss_fn_factory: Callable  # (model, z_loss) -> loss_fn(tree, batch, rng)
    extend_params: Callable  # (model params, rng) -> the tree (also for its abstract shapes)
    wrap_tx: Callable  # the optimizer -> the one used on the tree
    model_params: Callable  # the tree -> the model's params (eval hooks, export)


def train_from_parent(config, workdir: str, stage_dir: Path, stage: str, train_iter,
                      make_eval_iter=None, eval_hook=None, tree: TrainedTree | None = None):
    """The masked next-token loss from the parent stage's params with the shared loop (SFT, and
    FeedME on its distilled samples; LoRA-SFT with `tree`). eval_hook: model_config -> the loop's
    eval hook on the model's params."""
    mesh = shd.mesh_from_config(config.mesh)
    built = (build(config, mesh, sft_loss_fn) if tree is None else
             build(config, mesh, tree.loss_fn_factory, extend_params=tree.extend_params,
                   wrap_tx=tree.wrap_tx))
    tcfg = config.train

    def put(batch):
        return jax.device_put({k: np.asarray(v) for k, v in batch.items()}, built.batch_sharding)

    def init_state():
        _, params = load_stage(workdir, config.parent)
        if tree is not None:
            params = tree.extend_params(params, jax.random.key(config.seed))
        return state_from_params(params, built.tx, built.state_shardings)

    hook = eval_hook(built.model_config) if eval_hook is not None else None
    if hook is not None and tree is not None:
        model_hook = hook
        hook = lambda params, step: model_hook(tree.model_params(params), step)  # noqa: E731

    tokens_per_step = tcfg.batch_size * tcfg.seq_len
    loop = Loop(
        stage_dir=str(stage_dir), train_cfg=tcfg, train_step=built.train_step,
        train_iter=train_iter, put_batch=put, abstract_state=built.abstract_state,
        state_shardings=built.state_shardings,
        eval_step=built.eval_step if make_eval_iter is not None else None,
        make_eval_iter=make_eval_iter,
        eval_hook=hook,
        tokens_per_step=tokens_per_step,
        flops_per_step=train_flops_per_token(built.model_config, tcfg.seq_len) * tokens_per_step,
        peak_flops=tcfg.peak_flops,
        meta={"stage": stage, "model": config.model.to_dict()}, desc=stage)
    return loop.run(init_state, jax.random.key(config.seed))


def run(config, workdir: str) -> dict[str, Any]:
    return run_sft(config, workdir, STAGE)


def run_sft(config, workdir: str, stage: str, tree: TrainedTree | None = None,
            finish: Callable | None = None) -> dict[str, Any]:
    """The SFT stage under the name `stage`; with `tree`, training that tree (LoRA), and
    `finish(stage_dir, result, summary) -> more summary keys` before the summary is written."""
    from gpt_jax.data import tasks_data
    from gpt_jax.tokenizer import Tokenizer

    stage_dir, done = begin_stage(config, workdir, stage, parent=config.parent)
    if done is not None:
        return done
    t_start = time.perf_counter()
    tcfg = config.train
    tokenizer = Tokenizer.load(str(Path(workdir) / "tokenizer" / "tokenizer.json"))

    def make(split):
        return tasks_data.make_sft_mixture_iterator(config, tokenizer, split, tcfg.batch_size,
                                                    tcfg.seq_len, config.seed, workdir=workdir)

    train_iter = make("train")
    task, problems = tasks_data.rl_problems(config, "heldout", workdir)
    eval_problems = problems[: config.samples.eval_problems]
    result = train_from_parent(
        config, workdir, stage_dir, stage, train_iter, make_eval_iter=lambda: make("heldout"),
        eval_hook=lambda model_config: make_eval_hook(config, stage_dir, tokenizer, model_config,
                                                      task, eval_problems), tree=tree)
    tokens_per_step = tcfg.batch_size * tcfg.seq_len
    ev = result.last_eval
    summary = {
        "stage": stage,
        "parent": config.parent,
        "final_train_loss": result.last_train.get("loss"),
        "heldout_masked_loss": ev.get("eval_loss"),
        "heldout_masked_tokens": ev.get("eval_tokens"),
        "task": task.name,
        "task_heldout_accuracy": ev.get("task_accuracy"),
        "task_heldout_gold_score": ev.get("task_gold_score"),
        "task_eval_problems": len(eval_problems),
        "mixture_weights": train_iter.weights,
        "conversations": train_iter.conversation_counts,
        "tokens_seen": tcfg.total_steps * tokens_per_step,
        "tokens_per_sec": result.tokens_per_sec,
        "compile_seconds": result.compile_seconds,
        "wall_seconds": time.perf_counter() - t_start,
        "steps": tcfg.total_steps,
    }
    if finish is not None:
        summary.update(finish(stage_dir, result, summary))
        summary["wall_seconds"] = time.perf_counter() - t_start
    write_summary(stage_dir, summary)
    return summary
