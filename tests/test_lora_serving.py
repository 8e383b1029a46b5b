"""Many LoRA adapters in one batch on one copy of the base weights (gpt_jax/lora_batch.py): each
row's logits equal its own merged model's (adapters of different ranks and targets, token rows,
norm deltas; base rows untouched), and the serving engine's rows with different adapters, batched together, equal
each row alone and the merged model's engine; the prefix cache keeps each adapter's KV apart."""
import jax.numpy as jnp
import numpy as np
import pytest

from gpt_jax import lora
from gpt_jax import sampling as S
from gpt_jax.checkpoint import load_stage
from gpt_jax.lora_batch import AdapterTable, gather, weight_shapes
from gpt_jax.model import GPTConfig
from gpt_jax.serve import slots
from gpt_jax.serve.engine import Engine
from gpt_jax.serve.requests import Request
from gpt_jax.tokenizer import Tokenizer
from helpers import random_model_workdir
from test_lora import trained_adapter
from test_serve_engine import TEXTS, run

CONFIG = GPTConfig(family="llama", vocab_size=320, max_seq_len=160, n_layers=2, d_model=32,
                   n_heads=4, n_kv_heads=2, init_std=0.3)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    wd = random_model_workdir(tmp_path_factory.mktemp("lora_serving"), CONFIG)
    tok = Tokenizer.load(wd / "tokenizer" / "tokenizer.json")
    config, params = load_stage(wd, "sft")
    adapters = {
        "all8": trained_adapter(params, lora.LoRAConfig(rank=8, alpha=16.0), seed=1),
        "attn4": trained_adapter(params, lora.LoRAConfig(rank=4, alpha=4.0,
                                                         targets=("q", "v", "o")), seed=2),
        # the output head too, and trained token rows (embedding rows, output columns) of 3 ids
        "tok4": trained_adapter(params, lora.LoRAConfig(rank=4, alpha=8.0,
                                                        targets=("q", "up", "lm_head"),
                                                        token_ids=(3, 7, 290)), seed=3),
        # every norm's scale too (a per-row gain before each block's attention and MLP, and the
        # final norm's before the head)
        "norm4": trained_adapter(params, lora.LoRAConfig(rank=4, alpha=8.0, targets=("k",),
                                                         norms=True), seed=4),
    }
    return tok, config, params, adapters


def hidden(params, config, tokens, lora_rows=None):
    cfg, prm = S.unstack_layers(config, params)
    b, t = tokens.shape
    cache = slots.init_slots(cfg, b, t)
    causal = jnp.tril(jnp.ones((t, t), bool))[None].repeat(b, 0)
    positions = jnp.arange(t)[None].repeat(b, 0)
    x, _ = S.run_blocks(prm, cfg, tokens, positions, causal, cache["layers"], 0, lora=lora_rows)
    return np.asarray(S.head_logits(prm, cfg, x, lora_rows))


def test_each_row_gets_its_own_adapter(model):
    _, config, params, adapters = model
    cfg, prm = S.unstack_layers(config, params)
    table = AdapterTable.build(cfg, adapters, weight_shapes(prm["block_0"]))
    assert table.names == ("all8", "attn4", "tok4", "norm4") and table.rank == 8
    tokens = np.random.default_rng(0).integers(0, 300, (6, 12))
    tokens[:, [2, 5, 9]] = [3, 290, 7]  # the token rows' ids in every row
    tokens = jnp.asarray(tokens, jnp.int32)
    ids = np.array([0, 1, 2, 1, 3, 4], np.int32)
    batched = hidden(params, config, tokens, gather(table.device, ids))
    merged = {0: params, **{i + 1: lora.merge(params, adapters[n]).params
                            for i, n in enumerate(table.names)}}
    for row, i in enumerate(ids):
        alone = hidden(merged[int(i)], config, tokens[row:row + 1])[0]
        np.testing.assert_allclose(batched[row], alone, atol=2e-5, rtol=0)
    assert np.abs(batched[1] - batched[0]).max() > 0.1  # the adapter does change the logits
    no_rows = lora.Adapter({k: v for k, v in adapters["tok4"].params.items() if k != "tokens"},
                           lora.LoRAConfig(rank=4, alpha=8.0, targets=("q", "up", "lm_head")))
    without = hidden(lora.merge(params, no_rows).params, config, tokens[4:5])[0]
    assert np.abs(batched[4] - without).max() > 0.1  # the token rows do too
    no_norms = lora.Adapter({k: v for k, v in adapters["norm4"].params.items() if k != "norms"},
                            lora.LoRAConfig(rank=4, alpha=8.0, targets=("k",)))
    without = hidden(lora.merge(params, no_norms).params, config, tokens[5:])[0]
    assert np.abs(batched[5] - without).max() > 0.1  # and the norms' deltas
    with pytest.raises(KeyError, match="no adapter 'nope'"):
        table.index("nope")


def test_engine_batches_adapters_and_matches_merged_models(model):
    tok, config, params, adapters = model
    prompts = [[tok.bos_id, *tok.encode(t)] for t in TEXTS]
    names = [None, "all8", "attn4", "tok4", "norm4", "attn4"]
    reqs = [{"prompt": p, "max_tokens": 10, "adapter": a} for p, a in zip(prompts, names)]
    shared = Engine(params, config, tok, n_slots=8, prefix_cache_mb=16, adapters=adapters).start()
    try:
        together = run(shared, reqs)
        alone = [run(shared, [r])[0] for r in reqs]
        again = run(shared, reqs[1:2])[0]  # its prompt's blocks are cached by now
        base_same_prompt = run(shared, [{**reqs[1], "adapter": None}])[0]
        with pytest.raises(ValueError, match="no adapter 'nope'"):
            shared.submit(Request([1, 2], 4, lambda e: None, adapter="nope"))
    finally:
        shared.stop()
    for t, a in zip(together, alone):
        assert t["ids"] == a["ids"] and t["text"] == a["text"]
    assert again["ids"] == alone[1]["ids"] and again["done"].cached_tokens >= 16
    assert base_same_prompt["done"].cached_tokens == 0  # the adapter's KV is not the base's
    for name in ("all8", "attn4", "tok4", "norm4"):
        merged = Engine(lora.merge(params, adapters[name]).params, config, tok, n_slots=8,
                        prefix_cache_mb=0).start()
        try:
            for r, t in zip(reqs, together):
                if r["adapter"] == name:
                    ref = run(merged, [{**r, "adapter": None}])[0]
                    assert t["ids"] == ref["ids"], name
        finally:
            merged.stop()
    plain = Engine(params, config, tok, n_slots=8, prefix_cache_mb=0).start()
    try:
        for r, t in zip(reqs, together):
            if r["adapter"] is None:
                assert t["ids"] == run(plain, [r])[0]["ids"]  # base rows untouched
        assert base_same_prompt["ids"] == run(plain, [{**reqs[1], "adapter": None}])[0]["ids"]
    finally:
        plain.stop()
    assert base_same_prompt["ids"] != alone[1]["ids"]
