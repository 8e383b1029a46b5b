"""Token-level losses shared by the stages: masked next-token cross entropy with optional z-loss."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def cross_entropy(logits, targets, mask=None, z_loss: float = 0.0):
    """Mean (over mask) of -log p(target), plus z_loss * mean(logsumexp^2).

    logits [B, T, V] (float32), targets [B, T] int, mask [B, T] (1 = counted) or None.
    Returns (loss, aux) with aux = {"nll": mean nll, "num_tokens": sum(mask)}.
    """
    logits = logits.astype(jnp.float32)
    lse = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    nll = lse - target_logit
    mask = jnp.ones_like(nll) if mask is None else mask.astype(jnp.float32)
    count = mask.sum()
    denom = jnp.maximum(count, 1.0)
    mean_nll = (nll * mask).sum() / denom
    loss = mean_nll
    if z_loss:
        loss = loss + z_loss * (jnp.square(lse) * mask).sum() / denom
    return loss, {"nll": mean_nll, "num_tokens": count}
