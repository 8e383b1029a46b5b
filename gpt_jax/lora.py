"""LoRA: low-rank adapters on the attention and MLP projections, as explicit params.

For a target weight W (any of q, k, v, o, gate, up, fc, proj; stacked on the scanned `layers`
axis) an adapter holds A [layers, *in, r] and B [layers, r, *out], and the adapted weight is

    W' = W + (alpha / r) * A @ B        (contracting r; `in`/`out` are W's input/output axes)

B starts at zero, so an untrained adapter leaves the model unchanged. With `token_ids` the adapter
also holds, as deltas, full embedding rows (`wte`) and output columns (`lm_head`) of those tokens:
the chat special tokens, which pretraining never saw and a low-rank update of the projections
cannot teach (PEFT's "trainable tokens"); 2 x 15 x d_model params. With `norms` it also holds a
delta for every normalisation's scale (and bias): a per-channel gain, which is a full-rank
(diagonal) change of each weight the norm feeds, for 9 x d_model params. Why explicit params and
not a model transform: the model stays the one pure function; training differentiates the loss
of `merge(stop_gradient(base), adapter)` with respect to the adapter alone, so the optimizer
holds state for the adapter only (`masked_optimizer`), and export is the same `merge`.

Merging is exact up to float rounding (`unmerge(merge(W)) - W` is a few ulps). A `Merged` value
records which adapters it holds: merging one twice, or unmerging one that is not in, raises
`AdapterError`, the double-merge bug that otherwise silently doubles the update. Adapters are
saved alone as safetensors (`save_adapter` / `load_adapter`: KBs, with rank, alpha, targets and a
fingerprint of the base they were trained on in the metadata).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import string
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

# target name -> (input axes, output axes) of its weight, after the leading `layers` axes
TARGET_AXES = {"q": (1, 2), "k": (1, 2), "v": (1, 2), "o": (2, 1),
               "gate": (1, 1), "up": (1, 1), "fc": (1, 1), "proj": (1, 1), "lm_head": (1, 1)}
TOP_LEVEL_TARGETS = ("lm_head",)  # model-level weights (the untied output head), not per layer
DEFAULT_TARGETS = ("q", "k", "v", "o", "gate", "up", "fc", "proj")


class AdapterError(ValueError):
    """An adapter merged twice, unmerged when absent, or loaded onto a model it does not fit."""


@dataclasses.dataclass(frozen=True)
class LoRAConfig:
    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = DEFAULT_TARGETS
    # token ids whose embedding row (wte) and output column (lm_head) are trained in full, as a
    # delta: the chat special tokens, which pretraining never saw (PEFT's trainable tokens)
    token_ids: tuple[int, ...] = ()
    # every normalisation's scale (and bias) trained too, as a delta
    norms: bool = False

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    @classmethod
    def from_config(cls, cfg) -> "LoRAConfig":
        targets = cfg.targets if isinstance(cfg.targets, (list, tuple)) else cfg.targets.split(",")
        unknown = set(targets) - set(TARGET_AXES)
        if unknown:
            raise ValueError(f"lora.targets: unknown {sorted(unknown)}; known {sorted(TARGET_AXES)}")
        if int(cfg.rank) < 1:
            raise ValueError(f"lora.rank={cfg.rank} must be >= 1")
        token_ids = tuple(int(i) for i in cfg.get("token_ids", ()) or ())
        return cls(rank=int(cfg.rank), alpha=float(cfg.alpha), targets=tuple(targets),
                   token_ids=token_ids, norms=bool(cfg.get("norms", False)))


def target_paths(params, cfg: LoRAConfig) -> Iterator[tuple[tuple[str, ...], Any]]:
    """(path, weight) of every weight the adapter covers: leaves named one of `cfg.targets`
    under an `attn` or `mlp` module, and the output head (`lm_head`) when targeted."""
    def walk(node, path):
        for key, value in node.items():
            if isinstance(value, dict):
                yield from walk(value, (*path, key))
            elif key in cfg.targets and (path and path[-1] in ("attn", "mlp") or
                                         not path and key in TOP_LEVEL_TARGETS):
                yield (*path, key), value
    yield from walk(params, ())


def norm_paths(params) -> Iterator[tuple[tuple[str, ...], Any]]:
    """(path, weight) of every normalisation param: the leaves of modules named ln_*."""
    for path, value in _leaves(params):
        if len(path) > 1 and path[-2].startswith("ln"):
            yield path, value


def _split(shape, name: str):
    n_in, n_out = TARGET_AXES[name]
    lead = len(shape) - n_in - n_out
    return shape[:lead], shape[lead:lead + n_in], shape[lead + n_in:]


def init_adapter(params, cfg: LoRAConfig, rng) -> dict:
    """A fresh adapter for `params` (arrays or shapes): A ~ N(0, 1/fan_in), B = 0."""
    adapter = {}
    paths = list(target_paths(params, cfg))
    if not paths:
        raise AdapterError(f"no weight named {cfg.targets} under attn/mlp in these params")
    for k, (path, w) in enumerate(paths):
        lead, ins, outs = _split(w.shape, path[-1])
        fan_in = int(np.prod(ins))
        a = jax.random.normal(jax.random.fold_in(rng, k), (*lead, *ins, cfg.rank), jnp.float32)
        _set(adapter, path, {"A": a / np.sqrt(fan_in),
                             "B": jnp.zeros((*lead, cfg.rank, *outs), jnp.float32)})
    if cfg.token_ids:
        adapter["tokens"] = {k: jnp.zeros(shape, jnp.float32)
                             for k, shape in token_shapes(params, cfg).items()}
    if cfg.norms:
        for path, w in norm_paths(params):
            _set(adapter, ("norms", *path), jnp.zeros(w.shape, jnp.float32))
    return adapter


def token_shapes(params, cfg: LoRAConfig) -> dict[str, tuple[int, ...]]:
    """Shapes of the trained token deltas: wte rows [n, d] and lm_head columns [d, n] (none for
    a tied head, which is wte itself)."""
    n, vocab = len(cfg.token_ids), params["wte"].shape[0]
    if bad := [i for i in cfg.token_ids if not 0 <= i < vocab]:
        raise AdapterError(f"lora.token_ids {bad} outside the vocabulary [0, {vocab})")
    shapes = {"wte": (n, params["wte"].shape[1])}
    if "lm_head" in params:
        shapes["lm_head"] = (params["lm_head"].shape[0], n)
    return shapes


def delta(ab: dict, name: str, scale: float) -> jax.Array:
    """scale * A @ B over the rank axis, in W's layout [*lead, *in, *out]."""
    a, b = ab["A"], ab["B"]
    n_in, n_out = TARGET_AXES[name]
    lead = a.ndim - n_in - 1
    letters = iter(string.ascii_lowercase)
    ld = "".join(next(letters) for _ in range(lead))
    ii = "".join(next(letters) for _ in range(n_in))
    oo = "".join(next(letters) for _ in range(n_out))
    return scale * jnp.einsum(f"{ld}{ii}r,{ld}r{oo}->{ld}{ii}{oo}", a, b)


def apply(params, adapter: dict, cfg: LoRAConfig, sign: float = 1.0):
    """params with every target W replaced by W + sign * scale * A @ B (a pure function: the
    training path and `merge` share it)."""
    out = jax.tree.map(lambda x: x, params)  # a new tree of dicts, same leaves
    for path, w in target_paths(params, cfg):
        ab = _get(adapter, path)
        _set(out, path, (w + sign * delta(ab, path[-1], cfg.scale)).astype(w.dtype))
    if cfg.token_ids:
        ids, tokens = jnp.asarray(cfg.token_ids), adapter["tokens"]
        wte = jnp.asarray(out["wte"])  # `out`: after any low-rank update of the same weight
        out["wte"] = wte.at[ids].add(sign * jnp.asarray(tokens["wte"], wte.dtype))
        if "lm_head" in tokens:
            head = jnp.asarray(out["lm_head"])
            out["lm_head"] = head.at[:, ids].add(sign * jnp.asarray(tokens["lm_head"], head.dtype))
    if cfg.norms:
        for path, w in norm_paths(params):
            _set(out, path, (w + sign * _get(adapter["norms"], path)).astype(w.dtype))
    return out


@dataclasses.dataclass(frozen=True)
class Adapter:
    params: dict
    config: LoRAConfig
    meta: dict = dataclasses.field(default_factory=dict)

    @property
    def fingerprint(self) -> str:
        cfg = dataclasses.asdict(self.config)
        if not cfg["norms"]:  # the hash of an adapter saved before the field existed
            del cfg["norms"]
        return _tree_hash(self.params, json.dumps(cfg))

    def num_params(self) -> int:
        return int(sum(np.size(x) for _, x in _leaves(self.params)))


@dataclasses.dataclass(frozen=True)
class Merged:
    """Model params with adapters merged in, and which (by fingerprint, in order)."""
    params: Any
    adapters: tuple[str, ...] = ()


def merge(model: Any, adapter: Adapter) -> Merged:
    """`model` (params or a `Merged`) with `adapter` added; merging the same adapter twice raises."""
    merged = model if isinstance(model, Merged) else Merged(model)
    fp = adapter.fingerprint
    if fp in merged.adapters:
        raise AdapterError(f"adapter {fp} is already merged into these params")
    return Merged(apply(merged.params, adapter.params, adapter.config), (*merged.adapters, fp))


def unmerge(merged: Merged, adapter: Adapter) -> Merged:
    """Take `adapter` back out of `merged` (it must be in)."""
    fp = adapter.fingerprint
    if fp not in merged.adapters:
        raise AdapterError(f"adapter {fp} is not merged into these params "
                           f"(merged: {list(merged.adapters) or 'none'})")
    rest = tuple(a for a in merged.adapters if a != fp)
    return Merged(apply(merged.params, adapter.params, adapter.config, sign=-1.0), rest)


def params_fingerprint(params) -> str:
    """A short hash of model params: which base an adapter was trained on."""
    return _tree_hash(params)


def _tree_hash(tree, salt: str = "") -> str:
    h = hashlib.sha256(salt.encode())
    for path, leaf in sorted(_leaves(tree)):
        h.update("/".join(path).encode())
        h.update(np.ascontiguousarray(np.asarray(leaf, np.float32)).tobytes())
    return h.hexdigest()[:16]


def save_adapter(path: str | Path, adapter: Adapter) -> Path:
    """The adapter alone as safetensors ("blocks.attn.q.A", ...), config and meta in its header."""
    from safetensors.numpy import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {".".join(p): np.ascontiguousarray(np.asarray(x, np.float32))
               for p, x in _leaves(adapter.params)}
    meta = {"lora": json.dumps(dataclasses.asdict(adapter.config)),
            "meta": json.dumps(adapter.meta), "fingerprint": adapter.fingerprint}
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)  # a reader never sees half a file
    return path


def load_adapter(path: str | Path) -> Adapter:
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        header = f.metadata()
        params: dict = {}
        for key in f.keys():
            _set(params, tuple(key.split(".")), f.get_tensor(key))
    cfg = json.loads(header["lora"])
    adapter = Adapter(params, LoRAConfig(rank=cfg["rank"], alpha=cfg["alpha"],
                                         targets=tuple(cfg["targets"]),
                                         token_ids=tuple(cfg.get("token_ids", ())),
                                         norms=bool(cfg.get("norms", False))),
                      json.loads(header.get("meta", "{}")))
    if adapter.fingerprint != header.get("fingerprint"):
        raise AdapterError(f"{path}: the tensors do not match the fingerprint in its header")
    return adapter


def check_fits(params, adapter: Adapter) -> None:
    """Raise AdapterError unless every target weight of `params` has its A/B of matching shape."""
    for path, w in target_paths(params, adapter.config):
        try:
            ab = _get(adapter.params, path)
        except KeyError:
            raise AdapterError(f"the adapter has nothing for {'/'.join(path)}") from None
        lead, ins, outs = _split(w.shape, path[-1])
        want = {"A": (*lead, *ins, adapter.config.rank), "B": (*lead, adapter.config.rank, *outs)}
        for k, shape in want.items():
            if tuple(ab[k].shape) != tuple(shape):
                raise AdapterError(f"{'/'.join(path)}.{k}: shape {tuple(ab[k].shape)}, the "
                                   f"model needs {shape}")
    if adapter.config.token_ids:
        for k, shape in token_shapes(params, adapter.config).items():
            got = adapter.params.get("tokens", {}).get(k)
            if got is None or tuple(got.shape) != shape:
                raise AdapterError(f"tokens.{k}: shape {None if got is None else got.shape}, "
                                   f"the model needs {shape}")
    if adapter.config.norms:
        for path, w in norm_paths(params):
            try:
                got = _get(adapter.params["norms"], path)
            except KeyError:
                raise AdapterError(f"the adapter has no norms delta for {'/'.join(path)}") from None
            if tuple(got.shape) != tuple(w.shape):
                raise AdapterError(f"norms/{'/'.join(path)}: shape {tuple(got.shape)}, the model "
                                   f"needs {tuple(w.shape)}")


def masked_optimizer(tx: optax.GradientTransformation,
                     b_lr_ratio: float = 1.0) -> optax.GradientTransformation:
    """`tx` on params["adapter"], nothing (no state, zero update) on params["base"]. With
    `b_lr_ratio` != 1, the B matrices' updates are scaled by it (LoRA+, Hayou et al. 2024: B
    learns at ratio x the step of A)."""
    def label(params):
        def one(path, _):
            keys = [getattr(k, "key", None) for k in path]
            if keys[0] != "adapter":
                return "frozen"
            return "train_b" if b_lr_ratio != 1.0 and keys[-1] == "B" else "train"
        return jax.tree_util.tree_map_with_path(one, params)

    transforms = {"train": tx, "frozen": optax.set_to_zero()}
    if b_lr_ratio != 1.0:
        transforms["train_b"] = optax.chain(tx, optax.scale(float(b_lr_ratio)))
    return optax.multi_transform(transforms, label)


class TailAverageState(NamedTuple):
    inner: Any        # the wrapped optimizer's state
    step: jax.Array   # updates applied so far
    mean: Any         # running mean of the adapter after each update of the tail (adapter-shaped)


def tail_averaged(tx: optax.GradientTransformation, total_steps: int,
                  average_steps: int) -> optax.GradientTransformation:
    """`tx` on a {"base", "adapter"} tree, whose update number `total_steps` lands the adapter
    on the mean of its values after each of the last `average_steps` updates (tail, or
    Polyak-Ruppert, averaging) instead of on the last value; every earlier update is `tx`'s own.
    The running mean lives in the optimizer state, so a resumed run averages exactly what an
    uninterrupted one does, and everything after the last step (its evaluation, the saved
    adapter, the merge) sees the average. `average_steps` <= 1: `tx` unchanged."""
    if average_steps <= 1:
        return tx
    if average_steps > total_steps:
        raise ValueError(f"lora.average_steps={average_steps} > train.total_steps={total_steps}")
    start = total_steps - average_steps

    def init(params):
        return TailAverageState(tx.init(params), jnp.zeros((), jnp.int32),
                                jax.tree.map(jnp.zeros_like, params["adapter"]))

    def update(updates, state, params):
        updates, inner = tx.update(updates, state.inner, params)
        step = state.step + 1
        adapter = optax.apply_updates(params["adapter"], updates["adapter"])
        taken = jnp.maximum(step - start, 0)  # tail iterates so far, this one included
        weight = jnp.where(taken > 0, 1.0 / jnp.maximum(taken, 1), 0.0)
        mean = jax.tree.map(lambda m, a: m + (weight * (a - m)).astype(m.dtype), state.mean,
                            adapter)
        last = step == total_steps
        to_mean = jax.tree.map(lambda u, m, p: jnp.where(last, m - p, u), updates["adapter"],
                               mean, params["adapter"])
        return {**updates, "adapter": to_mean}, TailAverageState(inner, step, mean)

    return optax.GradientTransformation(init, update)


def _leaves(tree, path=()) -> Iterator[tuple[tuple[str, ...], Any]]:
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _leaves(value, (*path, key))
        else:
            yield (*path, key), value


def _get(tree: dict, path):
    for key in path:
        tree = tree[key]
    return tree


def _set(tree: dict, path, value) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value
