"""The moderation stage: hand-computed metrics, the data's split and encoding, and the stage end to
end on the shipped data (a 2-step pretrain trunk): summary keys, the TF-IDF baseline, the saved
classifier reloading to the same scores, and skip when done."""
import json

import numpy as np
import pytest

from gpt_jax import moderation_data as MD
from gpt_jax.train import moderation
from gpt_jax.tokenizer import train_bpe
from helpers import load_test_config, pretrained_workdir


def test_binary_metrics_by_hand():
    labels = [1, 1, 0, 0, 1]
    probs = [0.9, 0.4, 0.6, 0.1, 0.8]
    m = moderation.binary_metrics(labels, probs, threshold=0.5)
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert m["auroc"] == pytest.approx(5 / 6)  # 5 of the 6 (harmful, benign) pairs ordered right
    assert m["fpr_at_90_recall"] == pytest.approx(0.5)  # all 3 harmful caught at p >= 0.4
    assert m["accuracy"] == pytest.approx(3 / 5)


def test_first_user_turn_and_encoding():
    msgs = [{"role": "system", "content": "s"}, {"role": "user", "content": "  How do I "},
            {"role": "user", "content": "later"}]
    assert MD.first_user_turn(msgs) == "How do I"
    assert MD.first_user_turn([{"role": "assistant", "content": "x"}]) is None
    tok = train_bpe(["hello there how are you"] * 20, vocab_size=300, min_frequency=1)
    ids = MD.encode(tok, "hello there " * 50, 16)
    assert len(ids) == 16 and ids[0] == tok.bos_id and ids[-1] == tok.eos_id
    tokens, eos = MD.batch(tok, ["hello", "hello there how"], 16)
    assert tokens.shape == (2, 16) and tokens[0, eos[0]] == tokens[1, eos[1]] == tok.eos_id
    # a reply as the server's client reads it: a calculator call shown as "expr = result"
    reply = [{"type": "tool_call", "text": "21 + 9"}, {"type": "tool_result", "text": "30"},
             {"type": "text", "text": ".\nThe answer is 30."}]
    assert MD.first_turn(msgs + [{"role": "assistant", "content": reply}], "assistant") == \
        "21 + 9 = 30.\nThe answer is 30."


def test_benign_examples_hold_replies_and_the_arithmetic_task(data_dir, tmp_path):
    data = MD.load_examples(data_dir, tmp_path, 0.2, replies=True, arithmetic=50)
    everything = data["train"] + data["heldout"]
    sources = {e.source for e in everything}
    assert {"lima", "lima:reply", "arithmetic", "arithmetic:reply",
            "hh_rlhf_harmless_test"} <= sources
    assert "hh_rlhf_harmless_test:reply" not in sources  # replies are benign texts only
    arith = [e for e in everything if e.source.startswith("arithmetic")]
    assert len(arith) == 100 and all(e.label == 0 for e in arith)
    assert any(e.text.endswith(".") and "The answer is" in e.text and " = " in e.text
               for e in arith if e.source == "arithmetic:reply")
    side = {}
    for part, xs in data.items():  # a request and its reply are on the same side of the split
        for e in xs:
            assert side.setdefault(e.id, part) == part
    plain = MD.load_examples(data_dir, tmp_path, 0.2)
    assert {e.source for e in plain["train"] + plain["heldout"]} == \
        set(MD.HARMFUL_SETS) | set(MD.BENIGN_SETS)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, data_dir):
    return pretrained_workdir(tmp_path_factory.mktemp("moderation"), data_dir)


@pytest.mark.slow
def test_moderation_stage_end_to_end(workdir):
    from gpt_jax.tokenizer import Tokenizer

    config = load_test_config("moderation_test")
    s = moderation.run(config, str(workdir))
    for key in ("auroc", "baseline_auroc", "precision", "recall", "fpr_at_90_recall",
                "ms_per_check", "beats_baseline", "flagged_by_source"):
        assert key in s, key
    # the threshold flags threshold_recall of the training set's harmful texts, not p >= 0.5
    assert config.moderation.threshold_recall == 0.9 and s["threshold"] != 0.5
    assert s["flagged_by_source"]["hh_rlhf_harmless_test"] == pytest.approx(s["recall"])
    assert {"arithmetic", "arithmetic:reply", "lima:reply"} <= set(s["flagged_by_source"])
    held = s["examples"]["heldout"]
    assert held["harmful"] > 300 and held["benign"] > 1000  # the whole sets, split by id
    assert s["baseline_auroc"] > 0.9  # TF-IDF separates red-team requests from instructions
    assert 0.0 <= s["auroc"] <= 1.0 and s["ms_per_check"] > 0
    # the saved classifier reloads and scores as it did
    model_config, params, summary = moderation.load_moderation_model(str(workdir))
    tok = Tokenizer.load(workdir / "tokenizer" / "tokenizer.json")
    classify = moderation.make_classifier(model_config, tok, 48, 4)
    p = classify(params, ["How do I make a bomb?", "Write a poem about the sea.", "x"])
    assert p.shape == (3,) and ((p >= 0) & (p <= 1)).all()
    assert summary["auroc"] == s["auroc"]
    again = moderation.run(config, str(workdir))  # finished: skipped, same summary
    assert again["auroc"] == s["auroc"]
    assert json.loads((workdir / "moderation" / "summary.json").read_text())["steps"] == 4


def test_split_is_by_record_id():
    from gpt_jax.data.ranking import held_out

    ids = [f"rec-{i}" for i in range(2000)]
    a = [held_out(i, 0.2, salt="moderation") for i in ids]
    assert a == [held_out(i, 0.2, salt="moderation") for i in reversed(ids)][::-1]
    assert 0.15 < np.mean(a) < 0.25
