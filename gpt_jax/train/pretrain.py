"""Stage 2, pretraining: next-token prediction on (B, T+1) windows of the token shards.

`lm_loss_fn` is the pure loss; `build(config, mesh)` assembles model, optimizer, sharded
jit'd train/eval steps (shared with compile-only planning); `run(config, workdir)` trains with
the shared loop and writes `<workdir>/pretrain/summary.json`.

Batch convention (all stages): per-token arrays are [B, T+1] aligned with `tokens`; the model
reads tokens[:, :-1] and is scored on tokens[:, 1:] where loss_mask[:, 1:] is 1.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp

from gpt_jax import sharding as shd
from gpt_jax.flops import train_flops_per_token
from gpt_jax.metrics import write_summary
from gpt_jax.stages import begin_stage
from gpt_jax.model import GPT, GPTConfig
from gpt_jax.multihost import primary_first
from gpt_jax.train.loop import Loop
from gpt_jax.train.losses import cross_entropy
from gpt_jax.train.optim import make_optimizer
from gpt_jax.train.state import create_train_state, state_shardings
from gpt_jax.train.step import make_eval_step, make_train_step
from gpt_jax.train.synthetic import SyntheticTokens

STAGE = "pretrain"


def lm_loss_fn(model: GPT, z_loss: float = 0.0) -> Callable:
    """loss_fn(params, batch, rng) -> (loss, aux); rng None = deterministic (no dropout)."""

    def loss_fn(params, batch, rng):
        tokens = batch["tokens"]
        per_token = {k: batch[k][:, :-1] for k in ("positions", "segment_ids") if k in batch}
        logits = model.apply(
            {"params": params}, tokens[:, :-1], **per_token, deterministic=rng is None,
            rngs=None if rng is None else {"dropout": rng})
        mask = batch["loss_mask"][:, 1:] if "loss_mask" in batch else None
        return cross_entropy(logits, tokens[:, 1:], mask, z_loss)

    return loss_fn


@dataclasses.dataclass
class Built:
    """A model with its sharded, jit-compiled steps (what both training and AOT planning need)."""

    model_config: GPTConfig
    model: GPT
    mesh: Any
    tx: Any
    init_params: Callable
    abstract_state: Any
    state_shardings: Any
    batch_sharding: Any
    train_step: Callable
    eval_step: Callable


def build(config, mesh, loss_fn_factory: Callable = lm_loss_fn, model_cls: Callable = GPT,
          extend_params: Callable | None = None, wrap_tx: Callable | None = None) -> Built:
    """`model_cls(model_config, mesh=...)` (default GPT; e.g. heads.RewardModel) is what
    `loss_fn_factory(model, z_loss)` applies and `init_params` initialises.
    `extend_params(params, rng)` makes the trained tree from the model's (LoRA: {"base",
    "adapter"}); `wrap_tx(tx)` wraps the optimizer (LoRA: frozen base)."""
    model_config = GPTConfig.from_config(config.model)
    model = model_cls(model_config, mesh=mesh)
    tcfg = config.train
    global_batch = tcfg.batch_size
    if global_batch % (shd.batch_parallelism(mesh) * tcfg.grad_accum_steps):
        raise ValueError(
            f"train.batch_size={global_batch} must be divisible by data*fsdp="
            f"{shd.batch_parallelism(mesh)} times train.grad_accum_steps={tcfg.grad_accum_steps}")
    tx, schedule = make_optimizer(config.optim, tcfg.total_steps)
    if wrap_tx is not None:
        tx = wrap_tx(tx)
    dummy = jnp.zeros((1, min(tcfg.seq_len, model_config.max_seq_len)), jnp.int32)

    def init_params(rng):
        params = model_cls(model_config).init(rng, dummy)["params"]
        return params if extend_params is None else extend_params(params, rng)

    abstract, shardings = state_shardings(init_params, tx, mesh, jax.random.key(config.seed))
    batch_sharding = shd.batch_sharding(mesh)
    loss_fn = loss_fn_factory(model, tcfg.z_loss)
    train_step = jax.jit(
        make_train_step(loss_fn, tx, schedule, tcfg.grad_accum_steps),
        in_shardings=(shardings, batch_sharding, None),
        out_shardings=(shardings, None),
        donate_argnums=0,
    )
    eval_step = jax.jit(make_eval_step(loss_fn), in_shardings=(shardings.params, batch_sharding))
    return Built(model_config, model, mesh, tx, init_params, abstract, shardings, batch_sharding,
                 train_step, eval_step)


def _data_iterators(config, workdir: str, model_config: GPTConfig):
    """(train iterator, eval-iterator factory, eval bytes per token or None)."""
    tcfg = config.train
    if tcfg.data_source == "synthetic":
        def make_eval():
            return SyntheticTokens(tcfg.batch_size, tcfg.seq_len, model_config.vocab_size,
                                   seed=config.seed + 1_000_003)
        train = SyntheticTokens(tcfg.batch_size, tcfg.seq_len, model_config.vocab_size, config.seed)
        return train, make_eval, None
    if tcfg.data_source != "pipeline":
        raise ValueError(f"train.data_source={tcfg.data_source!r}; expected 'pipeline' or 'synthetic'")
    from gpt_jax.data import pipeline
    from gpt_jax.tokenizer import Tokenizer

    tokenizer = Tokenizer.load(str(Path(workdir) / "tokenizer" / "tokenizer.json"))
    if tokenizer.vocab_size > model_config.vocab_size:
        raise ValueError(f"model.vocab_size={model_config.vocab_size} is smaller than the "
                         f"tokenizer's {tokenizer.vocab_size}")

    def make(split, seed):
        return pipeline.make_pretrain_iterator(config, tokenizer, split=split,
                                               batch_size=tcfg.batch_size, seq_len=tcfg.seq_len,
                                               seed=seed, workdir=workdir)

    # process 0 builds any missing token cache first; the others then load it
    train = primary_first(lambda: make("train", config.seed), "token_cache:train")
    probe = primary_first(lambda: make("heldout", config.seed), "token_cache:heldout")
    return train, (lambda: make("heldout", config.seed)), getattr(probe, "bytes_per_token", None)


def _drill_probe(params, model_config: GPTConfig, workdir: str) -> dict:
    from gpt_jax.tasks.drills import drill_probe
    from gpt_jax.tokenizer import Tokenizer

    tokenizer = Tokenizer.load(str(Path(workdir) / "tokenizer" / "tokenizer.json"))
    return drill_probe(params, model_config, tokenizer)


def initialize_distributed(config) -> None:
    d = config.distributed
    if not d.initialize:
        return
    kwargs = {}
    if d.coordinator_address:
        kwargs = {"coordinator_address": d.coordinator_address,
                  "num_processes": d.num_processes, "process_id": d.process_id}
    jax.distributed.initialize(**kwargs)


def run(config, workdir: str) -> dict[str, Any]:
    stage_dir, done = begin_stage(config, workdir, STAGE)
    if done is not None:
        return done
    mesh = shd.mesh_from_config(config.mesh)
    built = build(config, mesh)
    tcfg = config.train
    train_iter, make_eval_iter, bytes_per_token = _data_iterators(config, workdir, built.model_config)
    uses_drills = (tcfg.data_source == "pipeline"
                   and float(config.data.pretrain_weights.get("arithmetic_drills", 0)) > 0)
    tokens_per_step = tcfg.batch_size * tcfg.seq_len
    rng = jax.random.key(config.seed)

    from gpt_jax.data.pipeline import shard_batch

    def put(batch):
        # this process's rows (all rows with one process) -> global arrays over the mesh
        return shard_batch({k: v for k, v in batch.items() if k != "source_ids"},
                           built.batch_sharding)

    loop = Loop(
        stage_dir=str(stage_dir), train_cfg=tcfg, train_step=built.train_step,
        train_iter=train_iter, put_batch=put, abstract_state=built.abstract_state,
        state_shardings=built.state_shardings, eval_step=built.eval_step,
        make_eval_iter=make_eval_iter, tokens_per_step=tokens_per_step,
        flops_per_step=train_flops_per_token(built.model_config, tcfg.seq_len) * tokens_per_step,
        peak_flops=tcfg.peak_flops, meta={"stage": STAGE, "model": config.model.to_dict()}, desc=STAGE,
    )
    result = loop.run(
        lambda: create_train_state(built.init_params, built.tx, mesh, rng)[0], rng)
    eval_loss = result.last_eval.get("eval_loss", float("nan"))
    summary = {
        "stage": STAGE,
        "final_train_loss": result.last_train.get("loss"),
        "final_eval_loss": eval_loss,
        "eval_bits_per_byte": (eval_loss / math.log(2) / bytes_per_token
                               if bytes_per_token else None),
        "tokens_seen": tcfg.total_steps * tokens_per_step,
        "tokens_per_sec": result.tokens_per_sec,
        "mfu": result.mfu,
        "compile_seconds": result.compile_seconds,
        "wall_seconds": result.wall_seconds,
        "num_params": built.model_config.num_params(),
        "steps": tcfg.total_steps,
        "mesh": dict(mesh.shape),
        "tokens_by_source": dict(getattr(train_iter, "tokens_by_source", {})),
        # greedy exact match on held-out 2-digit "a + b =" / "a - b =" drills
        "drill_probe": _drill_probe(result.state.params, built.model_config, workdir)
        if uses_drills else None,
    }
    write_summary(stage_dir, summary)
    return summary
