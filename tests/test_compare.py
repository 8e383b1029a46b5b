"""The compare stage and the arithmetic evaluation behind it: pass@k, format checks, prompt fitting
and reply decoding on hand-made inputs (fast), then the stage end to end on a tiny real workdir
(tokenizer + pretrain + SFT + an untrained reward model): the accuracy table's shape, every stored
score recomputed independently, and per-row sampling keys that make a draw batch-independent."""
import json
import math
import random

import jax
import numpy as np
import pytest

from gpt_jax import compare, labeler
from gpt_jax.eval import arith
from gpt_jax.tasks import ArithmeticTask
from tiny_workdir import config_from_tests, shared_tiny_workdir

TASK = ArithmeticTask()


def _problem(mode: str, level: str = "L2"):
    return TASK.with_mode(TASK.problems("train", 1, level=level)[0], mode)


def test_pass_at_k_is_the_unbiased_estimator():
    assert arith.pass_at_k(8, 0, 1) == 0.0 and arith.pass_at_k(8, 8, 8) == 1.0
    assert arith.pass_at_k(8, 2, 1) == pytest.approx(0.25)
    assert arith.pass_at_k(8, 2, 2) == pytest.approx(1 - 15 / 28)  # 1 - C(6,2)/C(8,2)
    assert arith.pass_at_k(8, 1, 8) == 1.0  # n - c < k
    assert arith.pass_at_k(8, 3, 4) == pytest.approx(1 - math.comb(5, 4) / math.comb(8, 4))


def test_format_ok_per_mode():
    cot = _problem("cot")
    assert arith.format_ok(cot, cot.solution, used_tool=False)
    carried = TASK.with_mode(TASK.render("L1", 47, (("+", 38),), random.Random(0),
                                         False), "cot")
    assert "4 + 3 + 1 = 8." in carried.solution.splitlines()
    assert arith.format_ok(carried, carried.solution, used_tool=False)
    assert not arith.format_ok(cot, f"The answer is {cot.answer}.", used_tool=False)
    direct = _problem("direct")
    assert arith.format_ok(direct, direct.solution, used_tool=False)
    assert not arith.format_ok(direct, cot.solution, used_tool=False)
    assert not arith.format_ok(direct, "The answer is", used_tool=False)
    calc = _problem("calc")
    assert arith.format_ok(calc, calc.solution, used_tool=True)
    assert not arith.format_ok(calc, calc.solution, used_tool=False)  # must call the tool
    wrong = calc.solution.replace(" = ", " = 1")  # wrong results still have the shape
    assert arith.format_ok(calc, wrong, used_tool=True)


def test_row_ids_are_stable_and_distinct():
    assert arith.row_id("arith-1:cot", 3) == arith.row_id("arith-1:cot", 3)
    ids = {arith.row_id(f"arith-{i}", s) for i in range(200) for s in range(8)}
    assert len(ids) == 1600 and all(0 <= i < 2**31 for i in ids)


def test_distinct_n_and_diversity():
    assert compare.distinct_n([[1, 2, 3], [1, 2, 4]], 1) == 4 / 6
    assert compare.distinct_n([[1, 2, 3], [1, 2, 4]], 2) == 3 / 4
    assert compare.distinct_n([[1]], 2) == 0.0
    # Prompt 1: two equal samples (d1 = 2/4, d2 = 1/2); prompt 2: one token each (d1 = 1, no
    # bigram, so it is left out of distinct_2). The stop id 9 is not counted.
    got = compare.diversity([[1, 2, 9], [1, 2, 9], [5, 9], [6, 9]], 2, {9})
    assert got == {"distinct_1": 0.75, "distinct_2": 0.5}


def test_available_models(tmp_path):
    for stage in ("pretrain", "sft", "ppo"):
        (tmp_path / stage).mkdir()
    (tmp_path / "pretrain" / "summary.json").write_text("{}")
    (tmp_path / "sft" / "summary.json").write_text("{}")
    present, missing = compare.available_models(str(tmp_path), ["base", "sft", "ppo", "feedme"])
    assert present == {"base": "pretrain", "sft": "sft"}
    assert list(missing) == ["ppo", "feedme"]
    with pytest.raises(KeyError, match="bon"):
        compare.available_models(str(tmp_path), ["bon"])


def test_a_stage_without_checkpoint_is_a_reason_not_a_crash(tmp_path):
    from helpers import tiny_config

    assert compare.load_model(str(tmp_path), "ppo").startswith("no checkpoint: ")
    (tmp_path / "ppo").mkdir()
    (tmp_path / "ppo" / "config.json").write_text(tiny_config().to_json())
    assert compare.load_model(str(tmp_path), "ppo").startswith("no checkpoint: ")


@pytest.fixture(scope="module")
def compared(tmp_path_factory, data_dir):
    workdir = shared_tiny_workdir(tmp_path_factory, data_dir)
    summary = compare.run(config_from_tests("compare_test"), str(workdir))
    return workdir, summary


@pytest.fixture(scope="module")
def tok_and_sets(compared):
    from gpt_jax.tokenizer import Tokenizer

    workdir, _ = compared
    config = config_from_tests("compare_test")
    tok = Tokenizer.load(str(workdir / "tokenizer" / "tokenizer.json"))
    return tok, config, compare.eval_sets(config, str(workdir), config.compare)


@pytest.mark.slow  # builds the tiny workdir (~60 s) unless another module already did
def test_compare_stage_end_to_end(compared, tok_and_sets):
    from gpt_jax.checkpoint import load_stage
    from gpt_jax.heads import score
    from gpt_jax.train import reward

    workdir, summary = compared
    tok, config, (task, sets, demos) = tok_and_sets
    c = config.compare
    assert summary["stage"] == "compare" and summary["problems_per_level"] == 4
    assert summary["missing"] == ["ppo", "feedme"]
    assert list(summary["models"]) == ["base", "sft"]
    assert json.loads((workdir / "compare" / "summary.json").read_text()) == summary
    rows = [json.loads(x) for x in (workdir / "compare" / "samples.jsonl").read_text().splitlines()]
    cot = [task.with_mode(p, "cot") for lv in ("L1", "L2", "L3") for p in sets[lv]]
    assert [r["id"] for r in rows] == [p.id for p in cot]
    assert [r["level"] for r in rows] == ["L1"] * 4 + ["L2"] * 4 + ["L3"] * 4

    rm_config, rm_params = reward.load_reward_model(str(workdir))
    score_rows = jax.jit(score, static_argnums=1)
    for name, m in summary["models"].items():
        assert set(m["accuracy"]) == {"L1", "L2", "L3"}
        assert all(set(row) == set(arith.EVAL_MODES) for row in m["accuracy"].values())
        assert set(m["pass_at_k"]) == {"1", "2"} and 0 <= m["format_valid"] <= 1
        assert set(m["examples"]) == {f"{lv}/{mode}" for lv in ("L1", "L2", "L3")
                                      for mode in arith.EVAL_MODES}
        answers = [r["answers"][name] for r in rows]
        gold = [labeler.gold_score(p, a["text"]) for p, a in zip(cot, answers)]
        assert [a["gold"] for a in answers] == gold
        assert m["gold_reward"] == pytest.approx(np.mean(gold), abs=1e-12)
        for lv in ("L1", "L2", "L3"):  # the cot cell of the table, from the stored answers
            right = [labeler.is_correct(p, a["text"]) for p, a in zip(cot, answers) if p.level == lv]
            assert m["accuracy"][lv]["cot"] == np.mean(right)
        # The reward model's score of each answer, recomputed: prompt + answer + end token.
        rows_ids = [tok.render_for_completion(task.prompt_messages(p)) + tok.encode(a["text"])
                    + [tok.token_id("assistant_end")] for p, a in zip(cot, answers)]
        tokens = np.full((len(rows_ids), rm_config.max_seq_len), tok.pad_id, np.int32)
        for i, ids in enumerate(rows_ids):
            tokens[i, :len(ids)] = ids[:rm_config.max_seq_len]
        lengths = np.asarray([min(len(x), rm_config.max_seq_len) for x in rows_ids])
        expect = score_rows(rm_params, rm_config, tokens, lengths)
        assert [a["rm"] for a in answers] == pytest.approx(np.asarray(expect), abs=1e-4, rel=1e-4)
        assert 0 < m["response_length"] <= 12
        assert np.isfinite(m["sample_entropy"]) and m["sample_entropy"] > 0
    for a in (r["answers"]["base"] for r in rows):
        assert "\n\n" not in a["text"] and "\nQuestion:" not in a["text"]

    # Re-asking gives the same table: greedy answers and the per-row sampling keys are fixed.
    model_config, params = load_stage(workdir, "sft")
    policy = arith.PolicyEval("sft", model_config, params, tok, demos, c)
    again = arith.evaluate(policy, sets, c)
    assert again["accuracy"] == summary["models"]["sft"]["accuracy"]
    assert again["pass_at_k"] == summary["models"]["sft"]["pass_at_k"]
    assert compare.run(config, str(workdir)) == summary  # done: skipped


@pytest.mark.slow
def test_a_rows_answer_does_not_depend_on_its_batch(compared, tok_and_sets):
    """Greedy and temperature-1 answers of a problem alone equal its answers inside the batch."""
    from gpt_jax.checkpoint import load_stage

    workdir, _ = compared
    tok, config, (task, sets, demos) = tok_and_sets
    model_config, params = load_stage(workdir, "sft")
    policy = arith.PolicyEval("sft", model_config, params, tok, demos, config.compare)
    problems = [task.with_mode(p, "cot") for p in sets["L1"] + sets["L2"]]
    for temperature, samples in ((0.0, 1), (1.0, 3)):
        batch = policy.answer(problems, tool=False, temperature=temperature, samples=samples)
        for i in (0, 5):
            alone = policy.answer(problems[i:i + 1], tool=False, temperature=temperature,
                                  samples=samples)
            assert [a[2] for a in alone] == [a[2] for a in batch[i * samples:(i + 1) * samples]]


@pytest.mark.slow
def test_base_stops_at_a_blank_line_with_the_same_answers(compared, tok_and_sets, monkeypatch):
    """The base model's rows stop decoding at a token holding its first stop string; every
    answer (text, ids, log-probs, greedy and sampled, with and without the calculator) equals
    decoding to the budget and truncating afterwards. The tiny test model seldom writes a blank
    line, so the stop string here is the character its free-running answers hold most often."""
    from collections import Counter

    from gpt_jax.checkpoint import load_stage

    workdir, _ = compared
    tok, config, (task, sets, demos) = tok_and_sets
    model_config, params = load_stage(workdir, "pretrain")
    policy = arith.PolicyEval("base", model_config, params, tok, demos, config.compare)
    problems = [task.with_mode(p, "calc") for p in sets["L1"] + sets["L2"]]
    monkeypatch.setattr(arith, "BASE_STOP_STRINGS", ("\x00",))  # never met: the free answers
    free = [a[0] for a in policy.answer(problems, tool=False, temperature=0.0)]
    stop = Counter(c for text in free for c in set(text[1:])).most_common(1)[0][0]
    monkeypatch.setattr(arith, "BASE_STOP_STRINGS", (stop, "\nQuestion:"))
    breaks = arith.break_ids(tok, stop)
    assert breaks and all(stop in tok.decode([i]) for i in breaks)
    real = arith.break_ids
    runs = {}
    for use_stop in (True, False):
        monkeypatch.setattr(arith, "break_ids", real if use_stop else lambda tok, text: ())
        runs[use_stop] = [policy.answer(problems, tool=tool, temperature=temperature,
                                        samples=samples)
                          for tool, temperature, samples in ((False, 0.0, 1), (True, 1.0, 2))]
    assert sum(a[2][-1] in breaks for a in runs[True][0] if a[2]) >= 2  # rows that stopped there
    for with_stop, without in zip(runs[True], runs[False]):
        assert [a[:3] for a in with_stop] == [a[:3] for a in without]
        for a, b in zip(with_stop, without):
            np.testing.assert_array_equal(a[3], b[3])


def test_visible_text_and_demo_ids(tmp_path, data_dir):
    from gpt_jax.tokenizer import train_bpe

    text = (data_dir / "sft/lima/lima.json").read_text()[:20_000]
    tok = train_bpe([text[i: i + 2000] for i in range(0, len(text), 2000)], vocab_size=400)
    calc = _problem("calc")
    ids = arith.demo_reply_ids(tok, calc)
    sid = tok.special_ids
    assert ids.count(sid["tool_call_start"]) == 2 and ids.count(sid["tool_result_end"]) == 2
    assert arith.visible_text(tok, ids) == (calc.solution, True)
    cot = _problem("cot")
    assert arith.visible_text(tok, arith.demo_reply_ids(tok, cot)) == (cot.solution, False)
    prompt = arith.base_prompt_ids(tok, [cot, cot, cot], cot, room=10_000)
    assert tok.decode(prompt[1:]).count("Question:") == 4
    one = len(arith.base_prompt_ids(tok, [cot], cot, room=10_000))
    assert len(arith.base_prompt_ids(tok, [cot, cot, cot], cot, room=one)) == one
    # new tokens per set: twice the longest reference, rounded up to 16, capped
    direct, longest = _problem("direct"), len(arith.demo_reply_ids(tok, cot))
    assert arith.reply_budget(tok, [direct, cot], cap=10_000) == -(-2 * longest // 16) * 16
    assert arith.reply_budget(tok, [direct, cot], cap=20) == 20
    assert arith.reply_budget(tok, [direct], cap=10_000) < arith.reply_budget(tok, [cot], 10_000)


@pytest.mark.slow
def test_report_shows_the_compare_stage(compared):
    from gpt_jax.report import fmt, write_report

    workdir, summary = compared
    text = write_report(workdir).read_text()
    sft = summary["models"]["sft"]
    cells = " | ".join(fmt(sft["accuracy"]["L2"][m]) for m in arith.EVAL_MODES)
    assert f"| sft | L2 | {cells} |" in text
    assert "Missing models: ppo, feedme." in text
    assert "compare_accuracy.png" in text
