"""AdamW (or Muon) with warmup + cosine decay, a weight-decay mask, and global-norm clipping.

`optim.name="muon"`: the transformer blocks' matrices (attention q/k/v/o, MLP) step by Muon
(momentum orthogonalised by Newton-Schulz, `optax.contrib.muon`, update RMS matched to AdamW's
so the AdamW learning rate carries over); embeddings, the output head, norms and biases by AdamW
without decay. On the tiny model it learns the arithmetic drills in far fewer tokens
(docs/arithmetic.md, "How fast drills are learned"). A LoRA adapter's factors of a block matrix
(`lora_sft` with `optim.name="muon"`) step by Muon too, each as a matrix: A over its weight's
input axes, B over the rank.

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


# (reduction axes, output axes) of each block matrix, counted from the end (a scanned stack adds a
# leading layer axis, which Muon treats as a batch of matrices).
MUON_AXES = {"q": ((-3,), (-2, -1)), "k": ((-3,), (-2, -1)), "v": ((-3,), (-2, -1)),
             "o": ((-3, -2), (-1,)), "gate": ((-2,), (-1,)), "up": ((-2,), (-1,)),
             "fc": ((-2,), (-1,)), "proj": ((-2,), (-1,))}


def _in_block(keys) -> bool:
    return any(k == "blocks" or k.startswith("block_") for k in keys)


def muon_dimensions(params):
    """MuonDimensionNumbers for each block matrix, None (AdamW) for everything else."""
    from optax.contrib import MuonDimensionNumbers

    def one(path, _):
        keys = [k for k in (getattr(p, "key", None) for p in path) if isinstance(k, str)]
        if not keys or not _in_block(keys):
            return None
        if keys[-1] in ("A", "B") and len(keys) > 1 and keys[-2] in MUON_AXES:
            return MuonDimensionNumbers(*_lora_axes(keys[-2], keys[-1]))
        if keys[-1] not in MUON_AXES:
            return None
        return MuonDimensionNumbers(*MUON_AXES[keys[-1]])

    return jax.tree_util.tree_map_with_path(one, params)


def _lora_axes(target: str, factor: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(reduction, output) axes of a LoRA factor of a block matrix (`gpt_jax.lora`) as a matrix
    for Muon: A [*in, r] reduces over the weight's input axes, B [r, *out] over the rank."""
    n_in, n_out = len(MUON_AXES[target][0]), len(MUON_AXES[target][1])
    if factor == "A":
        return tuple(range(-n_in - 1, -1)), (-1,)
    return (-n_out - 1,), tuple(range(-n_out, 0))


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
    """`cfg` holds name (adamw | muon), learning_rate, warmup_steps, min_lr_ratio, b1, b2, eps,
    weight_decay, grad_clip, muon_beta."""
    schedule = learning_rate_schedule(cfg, total_steps)
    parts = []
    if cfg.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(cfg.grad_clip))
    name = cfg.get("name", "adamw")
    if name == "adamw":
        parts.append(optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                                 weight_decay=cfg.weight_decay, mask=decay_mask))
    elif name == "muon":
        from optax.contrib import muon

        parts.append(muon(schedule, beta=cfg.get("muon_beta", 0.95), eps=cfg.eps,
                          weight_decay=cfg.weight_decay, consistent_rms=0.2,
                          muon_weight_dimension_numbers=muon_dimensions,
                          adam_b1=cfg.b1, adam_b2=cfg.b2))
    else:
        raise ValueError(f"optim.name={name!r}; expected 'adamw' or 'muon'")
    return optax.chain(*parts), schedule
