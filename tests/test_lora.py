"""LoRA (gpt_jax/lora.py): an untrained adapter changes nothing; merge = the adapted forward pass;
merge then unmerge gives the base logits back (max < 1e-5); merging twice or unmerging an absent
adapter raises; safetensors round trip (fingerprint checked, KB-sized); the masked optimizer keeps
state for the adapter alone and never moves the base."""
import dataclasses
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from gpt_jax import lora
from gpt_jax.model import GPT, GPTConfig
from helpers import random_params

CONFIG = GPTConfig(family="llama", vocab_size=256, max_seq_len=64, n_layers=2, d_model=32,
                   n_heads=4, n_kv_heads=2, init_std=0.1)
TOKENS = jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, 24)), jnp.int32)


def logits(params, config=CONFIG):
    return GPT(config).apply({"params": params}, TOKENS)


def trained_adapter(params, cfg=lora.LoRAConfig(rank=4, alpha=8.0), seed=1):
    """An adapter with non-zero B (as after training)."""
    ad = lora.init_adapter(params, cfg, jax.random.key(seed))
    ad = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.key(seed + 7), x.shape),
                      ad)
    return lora.Adapter(ad, cfg)


def test_targets_shapes_and_fraction():
    params = random_params(CONFIG, std=0.1)
    cfg = lora.LoRAConfig(rank=4)
    names = sorted("/".join(p) for p, _ in lora.target_paths(params, cfg))
    assert names == ["blocks/attn/k", "blocks/attn/o", "blocks/attn/q", "blocks/attn/v",
                     "blocks/mlp/gate", "blocks/mlp/proj", "blocks/mlp/up"]
    ad = lora.Adapter(lora.init_adapter(params, cfg, jax.random.key(0)), cfg)
    q = ad.params["blocks"]["attn"]["q"]
    assert q["A"].shape == (2, 32, 4) and q["B"].shape == (2, 4, 4, 8)
    o = ad.params["blocks"]["attn"]["o"]
    assert o["A"].shape == (2, 4, 8, 4) and o["B"].shape == (2, 4, 32)
    f = CONFIG.ff_dim
    # r * (in + out) per target and layer
    expected = 2 * 4 * ((32 + 32) + 2 * (32 + 16) + (32 + 32) + 2 * (32 + f) + (f + 32))
    assert ad.num_params() == expected
    lora.check_fits(params, ad)
    with pytest.raises(ValueError, match="unknown"):
        lora.LoRAConfig.from_config(type("C", (), {"rank": 4, "alpha": 8, "targets": "q,wq"}))


def test_merge_is_the_adapted_model_and_unmerge_restores_it():
    params = random_params(CONFIG, std=0.1)
    base = logits(params)
    fresh = lora.Adapter(lora.init_adapter(params, lora.LoRAConfig(), jax.random.key(0)),
                         lora.LoRAConfig())
    np.testing.assert_array_equal(logits(lora.merge(params, fresh).params), base)  # B = 0
    ad = trained_adapter(params)
    merged = lora.merge(params, ad)
    assert merged.adapters == (ad.fingerprint,)
    # merged weights = W + (alpha / r) * A @ B, checked on one weight by hand
    a, b = ad.params["blocks"]["mlp"]["up"]["A"], ad.params["blocks"]["mlp"]["up"]["B"]
    want = params["blocks"]["mlp"]["up"] + 2.0 * np.einsum("ldr,lrf->ldf", a, b)
    np.testing.assert_allclose(merged.params["blocks"]["mlp"]["up"], want, rtol=1e-6, atol=1e-6)
    adapted = logits(merged.params)
    assert float(jnp.max(jnp.abs(adapted - base))) > 1e-2  # it does change the model
    back = lora.unmerge(merged, ad)
    assert back.adapters == ()
    assert float(jnp.max(jnp.abs(logits(back.params) - base))) < 1e-5
    with pytest.raises(lora.AdapterError, match="already merged"):
        lora.merge(merged, ad)
    with pytest.raises(lora.AdapterError, match="not merged"):
        lora.unmerge(back, ad)
    other = trained_adapter(params, seed=2)
    both = lora.merge(merged, other)
    assert both.adapters == (ad.fingerprint, other.fingerprint)
    only_other = lora.unmerge(both, ad)
    np.testing.assert_allclose(logits(only_other.params),
                               logits(lora.merge(params, other).params), atol=1e-5)


def test_token_rows_train_the_special_tokens_embedding_and_output():
    params = random_params(CONFIG, std=0.1)
    cfg = lora.LoRAConfig(rank=4, alpha=8.0, token_ids=(1, 5, 7))
    ad = trained_adapter(params, cfg)
    assert ad.params["tokens"]["wte"].shape == (3, 32)
    assert ad.params["tokens"]["lm_head"].shape == (32, 3)
    assert ad.num_params() == trained_adapter(params).num_params() + 2 * 3 * 32
    merged = lora.merge(params, ad).params
    want = np.asarray(params["wte"]).copy()
    want[[1, 5, 7]] += np.asarray(ad.params["tokens"]["wte"])
    np.testing.assert_allclose(merged["wte"], want, rtol=1e-6, atol=1e-7)
    other = [i for i in range(256) if i not in (1, 5, 7)]
    np.testing.assert_array_equal(np.asarray(merged["wte"])[other],
                                  np.asarray(params["wte"])[other])  # only those rows move
    head = np.asarray(params["lm_head"]).copy()
    head[:, [1, 5, 7]] += np.asarray(ad.params["tokens"]["lm_head"])
    np.testing.assert_allclose(merged["lm_head"], head, rtol=1e-6, atol=1e-7)
    back = lora.unmerge(lora.merge(params, ad), ad).params
    assert float(jnp.max(jnp.abs(logits(back) - logits(params)))) < 1e-5
    lora.check_fits(params, ad)
    with pytest.raises(lora.AdapterError, match="outside the vocabulary"):
        lora.init_adapter(params, lora.LoRAConfig(token_ids=(256,)), jax.random.key(0))
    short = lora.Adapter({**ad.params, "tokens": {"wte": ad.params["tokens"]["wte"][:2]}}, cfg)
    with pytest.raises(lora.AdapterError, match="tokens.wte"):
        lora.check_fits(params, short)


def test_norm_deltas_add_to_every_norm_and_survive_a_save(tmp_path):
    params = random_params(CONFIG, std=0.1)
    cfg = lora.LoRAConfig(rank=4, alpha=8.0, norms=True)
    assert sorted("/".join(p) for p, _ in lora.norm_paths(params)) == [
        "blocks/ln_1/scale", "blocks/ln_2/scale", "ln_f/scale"]
    ad = trained_adapter(params, cfg)
    assert ad.num_params() == trained_adapter(params).num_params() + (2 * 2 + 1) * 32
    merged = lora.merge(params, ad)
    np.testing.assert_allclose(merged.params["blocks"]["ln_2"]["scale"],
                               np.asarray(params["blocks"]["ln_2"]["scale"])
                               + np.asarray(ad.params["norms"]["blocks"]["ln_2"]["scale"]),
                               rtol=1e-6, atol=1e-7)
    no_norms = lora.Adapter({k: v for k, v in ad.params.items() if k != "norms"},
                            lora.LoRAConfig(rank=4, alpha=8.0))
    assert float(jnp.max(jnp.abs(logits(merged.params)
                                 - logits(lora.merge(params, no_norms).params)))) > 1e-2
    back = lora.unmerge(merged, ad).params
    assert float(jnp.max(jnp.abs(logits(back) - logits(params)))) < 1e-5
    loaded = lora.load_adapter(lora.save_adapter(tmp_path / "a.safetensors", ad))
    assert loaded.config == cfg and loaded.fingerprint == ad.fingerprint
    np.testing.assert_array_equal(logits(lora.merge(params, loaded).params),
                                  logits(merged.params))
    # an adapter without norms keeps the fingerprint it had before the field existed
    old_salt = json.dumps({k: v for k, v in dataclasses.asdict(no_norms.config).items()
                           if k != "norms"})
    assert no_norms.fingerprint == lora._tree_hash(no_norms.params, old_salt)
    del ad.params["norms"]["ln_f"]
    with pytest.raises(lora.AdapterError, match="no norms delta for ln_f/scale"):
        lora.check_fits(params, ad)


def test_output_head_target_adds_to_the_token_columns():
    params = random_params(CONFIG, std=0.1)
    cfg = lora.LoRAConfig(rank=4, alpha=8.0, targets=("q", "lm_head"), token_ids=(1, 5))
    ad = trained_adapter(params, cfg)
    assert [p for p, _ in lora.target_paths(params, cfg)] == [("blocks", "attn", "q"),
                                                              ("lm_head",)]
    ab = ad.params["lm_head"]
    want = np.asarray(params["lm_head"]) + 2.0 * np.asarray(ab["A"]) @ np.asarray(ab["B"])
    want[:, [1, 5]] += np.asarray(ad.params["tokens"]["lm_head"])  # both updates, not one
    merged = lora.merge(params, ad)
    np.testing.assert_allclose(merged.params["lm_head"], want, rtol=1e-5, atol=1e-6)
    back = lora.unmerge(merged, ad).params
    assert float(jnp.max(jnp.abs(logits(back) - logits(params)))) < 1e-5


def test_safetensors_round_trip(tmp_path):
    params = random_params(CONFIG, std=0.1)
    ad = dataclasses.replace(trained_adapter(params, lora.LoRAConfig(rank=4, alpha=8.0,
                                                                     token_ids=(2, 3))),
                             meta={"base": "sft"})
    path = lora.save_adapter(tmp_path / "adapter.safetensors", ad)
    assert path.stat().st_size < 4 * ad.num_params() + 4096  # the adapter alone: KBs
    back = lora.load_adapter(path)
    assert back.config == ad.config and back.meta == {"base": "sft"}
    assert back.fingerprint == ad.fingerprint
    np.testing.assert_array_equal(logits(lora.merge(params, back).params),
                                  logits(lora.merge(params, ad).params))
    wrong = GPTConfig(**{**dataclasses.asdict(CONFIG), "d_model": 64})
    with pytest.raises(lora.AdapterError, match="shape"):
        lora.check_fits(random_params(wrong, std=0.1), back)
    data = bytearray(path.read_bytes())
    data[-4:] = b"\x00\x00\x80\x7f"  # corrupt the last float
    path.write_bytes(bytes(data))
    with pytest.raises(lora.AdapterError, match="fingerprint"):
        lora.load_adapter(path)


def test_masked_optimizer_trains_the_adapter_alone():
    params = random_params(CONFIG, std=0.1)
    cfg = lora.LoRAConfig(rank=4)
    both = {"base": params, "adapter": lora.init_adapter(params, cfg, jax.random.key(0))}
    tx = lora.masked_optimizer(optax.adam(1e-2))
    state = tx.init(both)
    state_floats = sum(x.size for x in jax.tree.leaves(state) if hasattr(x, "size")) - 1
    adapter_floats = sum(x.size for x in jax.tree.leaves(both["adapter"]))
    assert state_floats == 2 * adapter_floats  # adam's mu and nu, for the adapter only

    def loss(p):
        merged = lora.apply(jax.lax.stop_gradient(p["base"]), p["adapter"], cfg)
        out = GPT(CONFIG).apply({"params": merged}, TOKENS)
        return jnp.mean(jax.nn.logsumexp(out, -1) - out[..., 0])

    grads = jax.grad(loss)(both)
    assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree.leaves(grads["base"]))
    updates, _ = tx.update(grads, state, both)
    new = optax.apply_updates(both, updates)
    for a, b in zip(jax.tree.leaves(new["base"]), jax.tree.leaves(both["base"])):
        np.testing.assert_array_equal(a, b)
    moved = [float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(new["adapter"]),
                                                         jax.tree.leaves(both["adapter"]))]
    assert max(moved) > 0


def test_masked_muon_steps_the_factors_as_matrices_and_never_the_base():
    """The lora_sft preset's optimizer: Muon (optim.name="muon") under the mask. A and B keep
    one momentum each (Muon), the token rows Adam's two moments; the base has no state and does
    not move; B's first update is an orthogonalised matrix (singular values near one)."""
    from gpt_jax.configs import optim_config
    from gpt_jax.train.optim import make_optimizer

    params = random_params(CONFIG, std=0.1)
    cfg = lora.LoRAConfig(rank=4, token_ids=(1, 2))
    both = {"base": params, "adapter": lora.init_adapter(params, cfg, jax.random.key(0))}
    inner, _ = make_optimizer(optim_config(name="muon", learning_rate=1e-2, warmup_steps=0,
                                           weight_decay=0.0, grad_clip=0.0), 10)
    tx = lora.masked_optimizer(inner)
    state = tx.init(both)
    factors = sum(x.size for k, x in both["adapter"].items() if k != "tokens"
                  for x in jax.tree.leaves(x))
    tokens = sum(x.size for x in jax.tree.leaves(both["adapter"]["tokens"]))
    floats = sum(x.size for x in jax.tree.leaves(state) if getattr(x, "ndim", 0) > 0)
    assert 0 <= floats - (factors + 2 * tokens) <= 8  # (+ Muon's Newton-Schulz coefficients)
    grads = jax.tree.map(lambda x: jnp.asarray(np.random.default_rng(x.size).standard_normal(
        x.shape), x.dtype), both)
    updates, _ = tx.update(grads, state, both)
    assert all(float(jnp.abs(u).max()) == 0 for u in jax.tree.leaves(updates["base"]))
    b = np.asarray(updates["adapter"]["blocks"]["mlp"]["up"]["B"][0])  # [r, out] of layer 0
    s = np.linalg.svd(b / np.abs(b).max(), compute_uv=False)
    assert s.min() / s.max() > 0.5  # orthogonalised: the singular values close together


def test_lora_plus_scales_the_b_updates_alone():
    params = random_params(CONFIG, std=0.1)
    cfg = lora.LoRAConfig(rank=4, token_ids=(1, 2))
    both = {"base": params, "adapter": lora.init_adapter(params, cfg, jax.random.key(0))}
    grads = jax.tree.map(lambda x: jnp.full_like(x, 0.5), both)

    def first_update(ratio):
        tx = lora.masked_optimizer(optax.sgd(0.1), b_lr_ratio=ratio)
        updates, _ = tx.update(grads, tx.init(both), both)
        return updates

    plain, plus = first_update(1.0), first_update(4.0)
    for path, u in jax.tree_util.tree_leaves_with_path(plus["adapter"]):
        want = jax.tree_util.tree_leaves_with_path(plain["adapter"])
        ref = dict((jax.tree_util.keystr(k), v) for k, v in want)[jax.tree_util.keystr(path)]
        factor = 4.0 if path[-1].key == "B" else 1.0
        np.testing.assert_allclose(u, factor * ref, rtol=1e-6)
    assert all(float(jnp.abs(u).max()) == 0 for u in jax.tree.leaves(plus["base"]))


def test_tail_average_lands_the_last_step_on_the_mean_of_the_tail():
    """lora.tail_averaged: updates 1..T-1 are the wrapped optimizer's own, update T sets the
    adapter to the mean of its values after updates T-N+1..T (the last as the plain optimizer
    makes it); the base never moves; a state saved mid-tail and resumed ends the same; N <= 1
    is the optimizer itself, N > T is refused."""
    params = random_params(CONFIG, std=0.1)
    cfg = lora.LoRAConfig(rank=4, token_ids=(1, 2), norms=True)
    both = {"base": params, "adapter": lora.init_adapter(params, cfg, jax.random.key(0))}
    total, tail = 7, 3
    rng = np.random.default_rng(0)
    grads = [jax.tree.map(lambda x: jnp.asarray(rng.standard_normal(x.shape), x.dtype), both)
             for _ in range(total)]

    def run(tx, p, state=None, steps=range(total)):
        state = tx.init(p) if state is None else state
        seen = []
        for i in steps:
            updates, state = tx.update(grads[i], state, p)
            p = optax.apply_updates(p, updates)
            seen.append(p)
        return seen, state

    plain, _ = run(lora.masked_optimizer(optax.adam(1e-2)), both)
    tx = lora.tail_averaged(lora.masked_optimizer(optax.adam(1e-2)), total, tail)
    averaged, _ = run(tx, both)
    for got, want in zip(averaged[:-1], plain[:-1]):
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            np.testing.assert_array_equal(a, b)
    mean = jax.tree.map(lambda *xs: np.mean(np.stack(xs), 0), *[p["adapter"] for p in plain[-tail:]])
    for a, b in zip(jax.tree.leaves(averaged[-1]["adapter"]), jax.tree.leaves(mean)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert float(np.abs(np.asarray(averaged[-1]["adapter"]["blocks"]["mlp"]["up"]["B"]) -
                        np.asarray(plain[-1]["adapter"]["blocks"]["mlp"]["up"]["B"])).max()) > 1e-4
    for a, b in zip(jax.tree.leaves(averaged[-1]["base"]), jax.tree.leaves(both["base"])):
        np.testing.assert_array_equal(a, b)
    first, state = run(tx, both, steps=range(5))  # saved after step 5, inside the tail
    resumed, _ = run(tx, first[-1], jax.device_get(state), steps=range(5, total))
    for a, b in zip(jax.tree.leaves(resumed[-1]), jax.tree.leaves(averaged[-1])):
        np.testing.assert_array_equal(a, b)
    inner = lora.masked_optimizer(optax.adam(1e-2))
    assert lora.tail_averaged(inner, total, 1) is inner
    with pytest.raises(ValueError, match="average_steps"):
        lora.tail_averaged(inner, total, total + 1)


@pytest.fixture(scope="module")
def sft_workdir(tmp_path_factory, data_dir):
    from gpt_jax.train import sft
    from helpers import load_test_config, pretrained_workdir

    workdir = pretrained_workdir(tmp_path_factory.mktemp("lora"), data_dir)
    sft.run(load_test_config("sft_test"), str(workdir))
    return workdir


@pytest.mark.slow
def test_lora_sft_stage_end_to_end(sft_workdir):
    import json

    from gpt_jax.checkpoint import load_stage
    from gpt_jax.train import lora_sft
    from helpers import load_test_config

    workdir = sft_workdir
    config = load_test_config("lora_sft_test")
    s = lora_sft.run(config, str(workdir))
    model_config, pre = load_stage(workdir, "pretrain")
    n_base = sum(x.size for x in jax.tree.leaves(pre))
    from gpt_jax.tokenizer import Tokenizer

    adapter = lora.load_adapter(workdir / "lora_sft" / "adapter.safetensors")
    specials = Tokenizer.load(str(workdir / "tokenizer" / "tokenizer.json")).special_ids
    assert adapter.config == lora.LoRAConfig(rank=4, alpha=8.0,
                                             token_ids=tuple(sorted(specials.values())))
    assert adapter.meta["base_fingerprint"] == lora.params_fingerprint(pre)  # the base stayed
    assert s["trainable_params"] == adapter.num_params()
    assert s["trainable_fraction"] == adapter.num_params() / n_base
    # adam's mu and nu for the adapter only (+ the tail average's running mean: average_steps 2),
    # against mu and nu of every param (+ step counters)
    assert s["lora"]["average_steps"] == 2
    assert 0 <= s["optimizer_bytes"] - 4 * 3 * adapter.num_params() <= 16
    assert 0 <= s["optimizer_bytes_full"] - 4 * 2 * n_base <= 16
    assert s["optimizer_memory_vs_full"] < 0.5
    assert s["merge_max_abs_diff"] < 1e-5
    assert s["adapter_bytes"] < 4 * adapter.num_params() + 4096
    full = json.loads((workdir / "sft" / "summary.json").read_text())
    assert s["full_sft"]["heldout_masked_loss"] == full["heldout_masked_loss"]
    assert s["loss_vs_full"] == pytest.approx(s["heldout_masked_loss"] /
                                              full["heldout_masked_loss"])
    assert s["final_train_loss"] is not None and s["task_eval_problems"] == 4
    # both models asked the same held-out problems, every level x mode
    for key in ("heldout_accuracy", "full_heldout_accuracy"):
        assert sorted(s[key]) == ["L1", "L2", "L3"]
        assert all(sorted(row) == ["calc", "calc_off", "cot", "direct"]
                   for row in s[key].values())
    cells = [v for row in s["heldout_accuracy"].values() for v in row.values()]
    assert s["heldout_accuracy_mean"] == pytest.approx(np.mean(cells))
    assert all(v in (0.0, 0.5, 1.0) for v in cells)  # 2 problems per level
    if s["full_heldout_accuracy_mean"]:
        assert s["accuracy_vs_full"] == pytest.approx(s["heldout_accuracy_mean"] /
                                                      s["full_heldout_accuracy_mean"])
    # final/ holds pretrain + adapter merged: what chat, eval and the server load
    _, final = load_stage(workdir, "lora_sft")
    expected = lora.merge(pre, adapter).params
    for a, b in zip(jax.tree.leaves(final), jax.tree.leaves(expected)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    assert any(float(np.abs(np.asarray(a) - np.asarray(b)).max()) > 0
               for a, b in zip(jax.tree.leaves(final), jax.tree.leaves(pre)))  # it trained
    again = lora_sft.run(config, str(workdir))  # finished: skipped, same summary
    assert again["adapter_fingerprint"] == s["adapter_fingerprint"]


def test_fraction_by_width_counts_every_pair():
    """Hand count for the tiny recipe's model (4 layers, d 128, Llama FFN 384): rank r puts
    r(d_in + d_out) params on each weight: q, k, v, o (128 x 128), gate, up (128 x 384) and proj
    (384 x 128); token rows add 2 x d per token (embedding row and output column)."""
    from gpt_jax import lora_size

    tiny = GPTConfig(family="llama", vocab_size=2048, max_seq_len=256, n_layers=4, d_model=128,
                     n_heads=4)
    n_adapter, n_base = lora_size.param_counts(tiny, lora.LoRAConfig(rank=8))
    assert n_adapter == 4 * (4 * 8 * (128 + 128) + 3 * 8 * (128 + 384)) == 81920
    params = random_params(tiny, std=0.02)
    assert n_base == sum(x.size for x in jax.tree.leaves(params)) == 1377408
    cfg = lora.LoRAConfig(rank=8, token_ids=tuple(range(15)))
    real = lora.Adapter(lora.init_adapter(params, cfg, jax.random.key(0)), cfg).num_params()
    assert lora_size.param_counts(tiny, cfg) == (real, n_base) and real == 81920 + 2 * 15 * 128
    wide = lora_size.widened(tiny, 512)
    assert (wide.d_model, wide.n_heads, wide.n_layers, wide.vocab_size) == (512, 16, 4, 2048)
    fractions = lora_size.fraction_by_width(tiny, cfg, widths=(128, 512, 2048))
    assert fractions["128"] == real / n_base
    assert fractions["128"] > fractions["512"] > fractions["2048"]
    assert fractions["2048"] < 0.01 < fractions["512"]
    with pytest.raises(ValueError, match="head size 32"):
        lora_size.widened(tiny, 100)


def test_train_tokens_names_the_special_and_digit_rows(tmp_path):
    """`lora.train_tokens` of the lora_sft stage: "special", "digits" (0-9, one token each) or
    both joined by "+" name the token rows trained in full; "" none; anything else is refused."""
    from gpt_jax.train import lora_sft
    from helpers import small_tokenizer

    tok = small_tokenizer()
    tok.save(tmp_path / "tokenizer" / "tokenizer.json")

    def token_ids(which):
        config = ml_collections.ConfigDict({"lora": lora_sft.lora_config(rank=4,
                                                                          train_tokens=which)})
        return lora_sft.adapter_config(config, str(tmp_path)).token_ids

    specials = set(tok.special_ids.values())
    digits = {i for d in "0123456789" for i in tok.encode(d)}
    assert len(digits) == 10 and not digits & specials
    assert token_ids("special") == tuple(sorted(specials))
    assert token_ids("digits") == tuple(sorted(digits))
    assert token_ids("special+digits") == tuple(sorted(specials | digits))
    assert token_ids("") == ()
    with pytest.raises(ValueError, match="emoji"):
        token_ids("special+emoji")
