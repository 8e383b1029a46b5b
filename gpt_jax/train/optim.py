"""AdamW with warmup + cosine decay, a weight-decay mask, and global-norm clipping.

Weight decay applies to matmul weights only: not to norms, biases, or embeddings (token and
position). Gradient accumulation is done in `step.py` (not with optax.MultiSteps) so one jit'd
call is one optimizer step and the step counter, schedule and checkpoints stay aligned.
"""
from __future__ import annotations

import jax
import optax

NO_DECAY_NAMES = ("wte", "wpe", "scale", "bias")


def _decays(path) -> bool:
    keys = [getattr(k, "key", getattr(k, "name", None)) for k in path]
    keys = [k for k in keys if isinstance(k, str)]
    return not any(k in NO_DECAY_NAMES or k.endswith("_bias") for k in keys)


def decay_mask(params):
    """True where weight decay applies (matmul kernels), False for norms, biases, embeddings."""
    return jax.tree_util.tree_map_with_path(lambda path, _: _decays(path), params)


def learning_rate_schedule(cfg, total_steps: int) -> optax.Schedule:
    warmup = min(cfg.warmup_steps, max(total_steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=cfg.learning_rate,
        warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1),
        end_value=cfg.learning_rate * cfg.min_lr_ratio,
    )


def make_optimizer(cfg, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """`cfg` holds learning_rate, warmup_steps, min_lr_ratio, b1, b2, eps, weight_decay, grad_clip."""
    schedule = learning_rate_schedule(cfg, total_steps)
    parts = []
    if cfg.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(cfg.grad_clip))
    parts.append(optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                             weight_decay=cfg.weight_decay, mask=decay_mask))
    return optax.chain(*parts), schedule
