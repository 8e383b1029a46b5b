"""LoRA-SFT: the SFT stage (same data, loss, eval) training rank-r adapters on a frozen base.

The trained tree is {"base": the parent's params, "adapter": `lora.init_adapter`}; the loss is
SFT's on `lora.apply(stop_gradient(base), adapter)` and the optimizer is masked
(`lora.masked_optimizer`: the configured optimizer on the adapter, nothing and no state on the
base). With `lora.average_steps` = N the adapter the stage keeps is its mean over the last N
steps (`lora.tail_averaged`: the last update lands on it, so the final evaluation, the saved
adapter and the merge all see it). At the end it writes

- `<stage>/adapter.safetensors`: the adapter alone (KBs; base fingerprint in its header);
- `<stage>/final/`: the merged params, so the chat CLI, the evaluation and the server load the
  stage like any other;
- `summary.json`: SFT's keys plus `trainable_fraction` (adapter / base params; and
  `trainable_fraction_by_d_model`, the same adapter on this model family widened, `lora_size`),
  `optimizer_memory_vs_full` (bytes of this optimizer state / the same optimizer's state on every
  param), `merge_max_abs_diff` (max |logits| change of unmerge(merge(base)) against base on a
  held-out batch), and against the workdir's full `sft` stage when it has one:
  `accuracy_vs_full`, `loss_vs_full`, `tokens_per_sec_vs_full`.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gpt_jax import lora, lora_size
from gpt_jax.checkpoint import Checkpointer
from gpt_jax.metrics import read_summary
from gpt_jax.train.optim import make_optimizer
from gpt_jax.train.sft import TrainedTree, run_sft, sft_loss_fn

STAGE = "lora_sft"


def lora_config(**overrides) -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict({"rank": 8, "alpha": 16.0,
                                     "targets": ",".join(lora.DEFAULT_TARGETS),
                                     # "special": also train the chat special tokens' embedding
                                     # rows and output columns ("special+digits": and 0-9's);
                                     # "": the projections alone
                                     "train_tokens": "special",
                                     # every norm's scale trained too (a per-channel gain)
                                     "norms": False,
                                     # LoRA+: B's step = b_lr_ratio x A's (1: plain LoRA)
                                     "b_lr_ratio": 1.0,
                                     # the adapter kept is its mean over the last N steps
                                     # (tail averaging; 0: the last step's)
                                     "average_steps": 0})
    cfg.update(overrides)
    return cfg


def heldout_eval_config(**overrides) -> ml_collections.ConfigDict:
    """The comparison with full SFT: greedy, every level x mode, no pass@k (n_per_level 0: none)."""
    from gpt_jax.eval.arith import eval_config

    return eval_config(**{"n_per_level": 200, "pass_k_problems": 0, "max_new_tokens": 128,
                          **overrides})


def lora_tree(cfg: lora.LoRAConfig, seed: int, b_lr_ratio: float = 1.0, total_steps: int = 0,
              average_steps: int = 0) -> TrainedTree:
    """The adapter tree; with `average_steps` > 1 the last of `total_steps` updates lands the
    adapter on its mean over the last `average_steps` (`lora.tail_averaged`)."""
    def loss_fn_factory(model, z_loss):
        inner = sft_loss_fn(model, z_loss)

        def loss_fn(tree, batch, rng):
            return inner(lora.apply(jax.lax.stop_gradient(tree["base"]), tree["adapter"], cfg),
                         batch, rng)
        return loss_fn

    def extend_params(params, rng):
        del rng  # the adapter's init depends on the seed alone, in build() and from the parent
        import flax.linen as nn

        return {"base": params, "adapter": lora.init_adapter(nn.unbox(params), cfg,
                                                             jax.random.key(seed))}

    return TrainedTree(loss_fn_factory=loss_fn_factory, extend_params=extend_params,
                       wrap_tx=lambda tx: lora.tail_averaged(
                           lora.masked_optimizer(tx, b_lr_ratio), total_steps, average_steps),
                       model_params=lambda tree: lora.apply(tree["base"], tree["adapter"], cfg))


def _bytes(tree) -> int:
    return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree)
                   if hasattr(x, "dtype")))


def adapter_config(config, workdir: str) -> lora.LoRAConfig:
    """The stage's LoRAConfig. `lora.train_tokens` names the token rows trained in full besides
    the adapters, "+"-joined: "special" (the tokenizer's special ids), "digits" (0-9, each one
    token); "" for none."""
    cfg = lora.LoRAConfig.from_config(config.lora)
    which = [w for w in config.lora.get("train_tokens", "").split("+") if w]
    unknown = sorted(set(which) - {"special", "digits"})
    if unknown:
        raise ValueError(f"lora.train_tokens={config.lora.train_tokens!r}: {unknown} unknown; "
                         "use 'special', 'digits', both joined by '+', or ''")
    if not which:
        return cfg
    from gpt_jax.tokenizer import Tokenizer

    tok = Tokenizer.load(str(Path(workdir) / "tokenizer" / "tokenizer.json"))
    ids = set(tok.special_ids.values()) if "special" in which else set()
    if "digits" in which:
        digits = [tok.encode(d) for d in "0123456789"]
        if any(len(d) != 1 for d in digits):  # a tokenizer from before digits were split
            raise ValueError("lora.train_tokens has 'digits', but this workdir's tokenizer does "
                             "not give each digit one token")
        ids.update(d[0] for d in digits)
    return dataclasses.replace(cfg, token_ids=tuple(sorted(ids)))


def run(config, workdir: str) -> dict[str, Any]:
    cfg = adapter_config(config, workdir)
    average_steps = int(config.lora.get("average_steps", 0))

    def finish(stage_dir: Path, result, summary: dict) -> dict:
        from gpt_jax.model import GPT, GPTConfig

        tree = jax.device_get(result.state.params)
        base, adapter = tree["base"], lora.Adapter(tree["adapter"], cfg, {
            "base_stage": config.parent, "base_fingerprint": lora.params_fingerprint(tree["base"]),
            "model": config.model.to_dict()})
        lora.save_adapter(stage_dir / "adapter.safetensors", adapter)
        merged = lora.merge(base, adapter)
        final = Checkpointer(stage_dir / "final", max_to_keep=1, async_save=False)
        final.save(0, {"params": merged.params}, meta={"stage": STAGE,
                                                       "merged_adapters": list(merged.adapters)})
        final.close()
        model_config = GPTConfig.from_config(config.model)
        tokens = jnp.asarray(np.random.default_rng(config.seed).integers(
            0, model_config.vocab_size, (4, min(128, model_config.max_seq_len))), jnp.int32)
        apply = jax.jit(lambda p: GPT(model_config).apply({"params": p}, tokens))
        round_trip = lora.unmerge(merged, adapter).params
        full_tx, _ = make_optimizer(config.optim, config.train.total_steps)
        full_state = jax.eval_shape(full_tx.init, base)
        n_base = sum(int(np.size(x)) for x in jax.tree.leaves(base))
        out = {
            "lora": {"rank": cfg.rank, "alpha": cfg.alpha, "targets": list(cfg.targets),
                     "token_ids": list(cfg.token_ids),
                     "average_steps": average_steps},
            "trainable_params": adapter.num_params(),
            "trainable_fraction": adapter.num_params() / n_base,
            # the same adapter on this model family at larger widths: where "< 1%" holds
            "trainable_fraction_by_d_model": lora_size.fraction_by_width(model_config, cfg),
            "optimizer_bytes": _bytes(result.state.opt_state),
            "optimizer_bytes_full": _bytes(full_state),
            "merge_max_abs_diff": float(jnp.max(jnp.abs(apply(round_trip) - apply(base)))),
            "adapter_bytes": (stage_dir / "adapter.safetensors").stat().st_size,
            "adapter_fingerprint": adapter.fingerprint,
        }
        out["optimizer_memory_vs_full"] = out["optimizer_bytes"] / out["optimizer_bytes_full"]
        full = read_summary(Path(workdir) / "sft")
        if full is not None:
            out.update(_ratios(summary, full))
        out.update(heldout_against_full(config, workdir, model_config, merged.params,
                                        full is not None))
        return out

    return run_sft(config, workdir, STAGE, finish=finish,
                   tree=lora_tree(cfg, config.seed, float(config.lora.get("b_lr_ratio", 1.0)),
                                  int(config.train.total_steps), average_steps))


def _ratios(ours: dict, full: dict) -> dict:
    """LoRA-SFT against the full SFT stage (None where full SFT's figure is missing or 0)."""
    def ratio(key):
        a, b = ours.get(key), full.get(key)
        return a / b if a is not None and b else None
    return {"full_sft": {k: full.get(k) for k in ("task_heldout_accuracy", "heldout_masked_loss",
                                                  "tokens_per_sec", "steps")},
            "loss_vs_full": ratio("heldout_masked_loss"),
            "tokens_per_sec_vs_full": ratio("tokens_per_sec")}


def heldout_against_full(config, workdir: str, model_config, params, with_full: bool) -> dict:
    """Greedy accuracy on the compare stage's held-out problems (`config.heldout_eval.n_per_level`
    per level, each asked in every mode) of the merged model and, `with_full`, of the workdir's
    full `sft` stage on the same problems: `heldout_accuracy` (level -> mode -> accuracy), its
    mean over the cells, and `accuracy_vs_full` = that mean / full SFT's."""
    from gpt_jax.compare import eval_sets, load_model
    from gpt_jax.eval.arith import PolicyEval, evaluate
    from gpt_jax.tokenizer import Tokenizer

    c = config.heldout_eval
    if int(c.n_per_level) < 1:
        return {}
    tokenizer = Tokenizer.load(str(Path(workdir) / "tokenizer" / "tokenizer.json"))
    _, sets, demos = eval_sets(config, workdir, c)

    def table(name, cfg, p):
        accuracy = evaluate(PolicyEval(name, cfg, p, tokenizer, demos, c), sets, c)["accuracy"]
        return accuracy, float(np.mean([v for row in accuracy.values() for v in row.values()]))

    accuracy, mean = table(STAGE, model_config, params)
    out = {"heldout_problems_per_level": int(c.n_per_level), "heldout_accuracy": accuracy,
           "heldout_accuracy_mean": mean}
    full = load_model(workdir, "sft") if with_full else "no sft stage"
    if not isinstance(full, str):
        full_accuracy, full_mean = table("sft", *full)
        out.update(full_heldout_accuracy=full_accuracy, full_heldout_accuracy_mean=full_mean,
                   accuracy_vs_full=mean / full_mean if full_mean else None)
    return out
