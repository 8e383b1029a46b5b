"""The evaluation harness (gpt_jax.eval): log-likelihood scoring against HF transformers, a model
forced to prefer one letter scores that letter's share, bits per byte windows, resumable and
never-stale units, and the command end to end on a random-weight workdir with real MMLU."""
import dataclasses
import json

import numpy as np
import pytest
import torch

from gpt_jax import hf, scoring
from gpt_jax.eval import harness, loglik, mmlu
from gpt_jax.eval.__main__ import main
from gpt_jax.model import GPTConfig
from helpers import head_model_stage, random_model_workdir, random_params, small_tokenizer

CONFIGS = {
    "llama": GPTConfig(family="llama", vocab_size=320, max_seq_len=96, n_layers=2, d_model=32,
                       n_heads=4, n_kv_heads=2, init_std=0.3),
    "gpt2": GPTConfig(family="gpt2", vocab_size=320, max_seq_len=96, n_layers=2, d_model=32,
                      n_heads=4, init_std=0.3),
}
QUESTIONS = [
    {"question": "What is 2 + 2?", "choices": ["3", "4", "5", "22"], "answer": 1},
    {"question": "Which is a colour?", "choices": ["red", "dog", "run", "seven"], "answer": 0},
    {"question": "你好 means?", "choices": ["hello", "bye", "yes", "no"], "answer": 0},
]


def _hf_logliks(model, contexts, choices):
    out = []
    for ctx, cs in zip(contexts, choices):
        row = []
        for c in cs:
            ids = torch.tensor([list(ctx) + list(c)])
            with torch.no_grad():
                logp = torch.log_softmax(model(ids).logits[0].double(), -1)
            row.append(sum(float(logp[len(ctx) - 1 + i, t]) for i, t in enumerate(c)))
        out.append(row)
    return np.array(out)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_choice_logliks_equal_hf_transformers(family):
    tok, config = small_tokenizer(), CONFIGS[family]
    params = random_params(config, seed=1, std=0.1)
    model = hf.to_hf(config, params)
    contexts = [mmlu.prompt_ids(tok, "elementary_mathematics", QUESTIONS[:1], q, 88)[0]
                for q in QUESTIONS]
    single = [[[50], [51], [52], [53]]] * len(QUESTIONS)  # one token each: one forward per question
    words = [[tok.encode(" " + c) for c in q["choices"]] for q in QUESTIONS]  # several tokens
    assert any(len(x) > 1 for w in words for x in w)
    for choices in (single, words):
        ours = loglik.choice_logliks(params, config, contexts, choices, pad_id=tok.pad_id)
        np.testing.assert_allclose(ours, _hf_logliks(model, contexts, choices), atol=1e-4)


def _prefers_b(tok, config):
    """Random params edited so the model's next token is always "B" (the last token of " B"):
    every block writes nothing, every embedding has +1 in dimension 0, the final norm keeps only
    dimension 0, and the head reads "B" from it."""
    params = random_params(config, seed=2, std=0.1)
    params["blocks"]["attn"]["o"][:] = 0
    params["blocks"]["mlp"]["proj"][:] = 0
    params["wte"][:, 0] = 1.0
    params["ln_f"]["scale"][:] = 0
    params["ln_f"]["scale"][0] = 1.0
    params["lm_head"][0, tok.encode(" B")[-1]] = 50.0
    return params


def test_a_model_forced_to_one_letter_scores_that_letters_share():
    tok, config = small_tokenizer(), dataclasses.replace(CONFIGS["llama"], max_seq_len=256)
    params = _prefers_b(tok, config)
    rng = np.random.default_rng(0)
    qs = [{"question": f"Question {i}?", "choices": ["w", "x", "y", "z"],
           "answer": int(rng.integers(4))} for i in range(40)]
    got = mmlu.score_subject(config, params, tok, "toy", qs[:2], qs, k_shot=1)
    assert got["total"] == 40 and got["correct"] == sum(q["answer"] == 1 for q in qs)
    assert got["shots"] == 1.0


def test_text_nats_splits_long_documents_into_context_windows():
    tok, config = small_tokenizer(), CONFIGS["llama"]
    params = random_params(config, seed=3, std=0.1)
    doc = tok.encode("The quick brown fox jumps over the lazy dog. " * 20)
    window = config.max_seq_len - 1
    assert len(doc) > 2 * window
    want = 0.0
    for s in range(0, len(doc), window):
        lp, mask = scoring.logprobs(params, config, [[tok.eos_id]], [doc[s:s + window]])
        want -= float(lp[mask].sum())
    got = loglik.text_nats(params, config, [doc, doc[:10]], tok.eos_id)
    short, _ = scoring.logprobs(params, config, [[tok.eos_id]], [doc[:10]])
    assert got == pytest.approx(want - float(short.sum()), rel=1e-6)


def test_parts_resume_after_a_kill_and_never_reuse_a_changed_unit(tmp_path):
    parts = harness.Parts(tmp_path / "parts.jsonl")
    calls = []
    for i in range(5):
        parts.get_or_run(harness.unit_key("u", i), lambda i=i: calls.append(i) or {"v": i})
    lines = (tmp_path / "parts.jsonl").read_text().splitlines()
    (tmp_path / "parts.jsonl").write_text("\n".join(lines[:3]) + "\n" + lines[3][:10])  # killed
    again = harness.Parts(tmp_path / "parts.jsonl")
    calls.clear()
    got = [again.get_or_run(harness.unit_key("u", i), lambda i=i: calls.append(i) or {"v": i})
           for i in range(5)]
    assert calls == [3, 4] and [g["v"] for g in got] == list(range(5))
    again.get_or_run(harness.unit_key("u", 0, "other setting"), lambda: calls.append("new"))
    assert calls[-1] == "new"


def test_the_command_end_to_end_and_resumed(tmp_path, capsys):
    config = GPTConfig(family="llama", vocab_size=320, max_seq_len=256, n_layers=2, d_model=32,
                       n_heads=4, n_kv_heads=2, init_std=0.3)
    wd = random_model_workdir(tmp_path, config, stages=("sft", "pretrain"))
    cfg = json.loads((wd / "pretrain" / "config.json").read_text())
    cfg["data"] = {"pretrain_weights": {"tiny_shakespeare": 1.0, "web_demo_en": 0.5}}
    (wd / "pretrain" / "config.json").write_text(json.dumps(cfg))
    argv = [f"--workdir={wd}", "--suites=mmlu,bpb", "--limit=1", "--mmlu-shots=1"]
    assert main(argv) == 0
    s = json.loads((wd / "eval" / "summary.json").read_text())
    assert set(s["stages"]) == {"pretrain", "sft"}
    for stage in ("pretrain", "sft"):
        m = s["stages"][stage]["mmlu"]
        assert m["questions"] == m["subjects"] == 57 and 0 <= m["micro_accuracy"] <= 1
        assert set(s["stages"][stage]["bpb"]["per_source"]) == {"tiny_shakespeare", "web_demo_en"}
        assert 0 < s["stages"][stage]["bpb"]["all"] < 20
    assert "## Evaluation suites" in (wd / "REPORT.md").read_text()
    n_parts = len((wd / "eval" / "parts.jsonl").read_text().splitlines())
    assert n_parts == 2 * (57 + 2)
    capsys.readouterr()
    assert main(argv) == 0  # every unit is cached: nothing is scored again
    assert len((wd / "eval" / "parts.jsonl").read_text().splitlines()) == n_parts
    assert json.loads((wd / "eval" / "summary.json").read_text())["stages"] == s["stages"]
    # one suite at a time: the other's results stay in the table while their stage is unchanged
    assert main([f"--workdir={wd}", "--suites=bpb", "--limit=2", "--no-report"]) == 0
    s2 = json.loads((wd / "eval" / "summary.json").read_text())
    assert s2["stages"]["sft"]["mmlu"] == s["stages"]["sft"]["mmlu"]
    assert s2["limits"] == {"mmlu": 1, "bpb": 2}
    assert main([f"--workdir={wd}", "--suites=nope"]) == 2


def test_gsm8k_and_winrate_suites(tmp_path):
    config = GPTConfig(family="llama", vocab_size=320, max_seq_len=256, n_layers=2, d_model=32,
                       n_heads=4, n_kv_heads=2, init_std=0.3)
    wd = random_model_workdir(tmp_path, config, stages=("sft", "pretrain"))
    head_model_stage(wd, config, "reward")
    assert main([f"--workdir={wd}", "--suites=winrate", "--limit=3", "--no-report"]) == 0
    assert main([f"--workdir={wd}", "--suites=gsm8k", "--limit=3", "--no-report"]) == 0
    s = json.loads((wd / "eval" / "summary.json").read_text())["stages"]
    assert s["sft"]["gsm8k"]["problems"] == 3 and "accuracy_calc" in s["sft"]["gsm8k"]
    assert "accuracy_calc" not in s["pretrain"]["gsm8k"]  # the base model answers few-shot
    w = s["sft"]["winrate"]
    assert w["instructions"] == 3 and w["win_rate"] in (0, 1 / 6, 1 / 3, 0.5, 2 / 3, 5 / 6, 1)
    assert "winrate" not in s["pretrain"]  # chat stages only


def test_length_controlled_win_rate_removes_a_length_preference():
    from gpt_jax.eval.generative import length_controlled

    rng = np.random.default_rng(0)
    diff = rng.normal(200, 300, 4000)  # our answers mostly longer
    x = np.tanh(diff / diff.std())
    wins = (rng.random(4000) < 1 / (1 + np.exp(-(0.0 + 3.0 * x)))).astype(float)
    assert wins.mean() > 0.65  # the judge likes length...
    assert length_controlled(wins, diff) == pytest.approx(0.5, abs=0.05)  # ...not the answers
    fair = (rng.random(4000) < 0.7).astype(float)
    assert length_controlled(fair, diff) == pytest.approx(fair.mean(), abs=0.03)
