"""SFT batches: packed conversations with masks exactly on assistant tokens, segment ids that
separate examples, exact resume."""
import json

import ml_collections
import numpy as np
import pytest

from gpt_jax.data import pipeline
from gpt_jax.data.config import data_config
from gpt_jax.tokenizer import train_bpe


@pytest.fixture(scope="module")
def tok(data_dir):
    text = (data_dir / "sft/lima/lima.json").read_text()[:300_000]
    return train_bpe([text[i : i + 2000] for i in range(0, len(text), 2000)], vocab_size=600)


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    cfg = ml_collections.ConfigDict({"seed": 0, "data": data_config()})
    cfg.data.cache_dir = str(tmp_path_factory.getbasetemp() / "shared_data_cache")
    cfg.data.sft_weights = {"identity": 0.5, "alpaca_seed_tasks": 0.3, "sharegpt_zh": 0.2}
    return cfg


def _it(config, tok, T=256, B=4):
    return pipeline.make_sft_iterator(config, tok, "train", B, T, seed=0)


def test_packed_rows_are_rendered_conversations(config, tok):
    it = _it(config, tok)
    b = next(it)
    assert set(b) == {"tokens", "loss_mask", "segment_ids", "positions"}
    assert all(v.shape == (4, 257) for v in b.values())
    assert (b["segment_ids"].max(axis=1) > 1).any()  # short identity turns get packed
    for row in range(4):
        tokens, mask, seg, pos = (b[k][row] for k in ("tokens", "loss_mask", "segment_ids", "positions"))
        for s in range(1, seg.max() + 1):
            ids = tokens[seg == s]
            assert ids[0] == tok.bos_id and pos[seg == s][0] == 0
            assert np.array_equal(pos[seg == s], np.arange(len(ids)))
            msgs = tok.parse_chat(ids)  # every segment is one whole (or truncated) conversation
            full_ids, full_mask = tok.render_chat(msgs)
            assert np.array_equal(mask[seg == s], full_mask[: len(ids)])
        assert (tokens[seg == 0] == tok.pad_id).all() and (mask[seg == 0] == 0).all()
    assert it.dropped["sharegpt_zh"] >= 1  # the user-only conversation cannot be learned from


def test_unpacked_rows_hold_one_conversation(config, tok):
    cfg = ml_collections.ConfigDict(config.to_dict())
    cfg.data.pack_conversations = False
    b = next(_it(cfg, tok))
    assert (b["segment_ids"].max(axis=1) == 1).all()


def test_sft_resume_is_exact(config, tok):
    it = _it(config, tok)
    for _ in range(3):
        next(it)
    state = json.loads(json.dumps(it.get_state()))
    expected = [next(it) for _ in range(2)]
    again = _it(config, tok)
    again.set_state(state)
    for e in expected:
        got = next(again)
        assert all(np.array_equal(got[k], e[k]) for k in e)
