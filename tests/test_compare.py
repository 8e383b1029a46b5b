"""The compare stage: prompt building, stop strings and diversity metrics on hand-made inputs (fast),
then the stage end to end on a tiny real workdir (tokenizer + pretrain + SFT + an untrained reward
model): summary keys, missing models, and every stored score recomputed independently."""
import json

import jax
import numpy as np
import pytest

from gpt_jax import compare, labeler
from gpt_jax.tasks import Problem
from tiny_workdir import shared_tiny_workdir, config_from_tests

DEMO = Problem("d1", "Ava has 1 book. She gets 2 more. How many books does Ava have now?", "3",
               "1 + 2 = 3.\nThe answer is 3.")


class CharTokenizer:
    """One id per character; eos = 1 (enough for the prompt-fitting logic)."""

    eos_id = 1

    def encode(self, text):
        return [ord(c) for c in text]


def test_few_shot_prompt_format():
    assert compare.few_shot_prompt([DEMO, DEMO], "Q?") == (
        f"Question: {DEMO.question}\nAnswer: 1 + 2 = 3.\nThe answer is 3.\n\n" * 2
        + "Question: Q?\nAnswer:")


def test_base_prompt_drops_the_oldest_demonstrations_to_fit():
    tok = CharTokenizer()
    one = len(compare.few_shot_prompt([DEMO], "Q?")) + 1
    ids = compare.base_prompt_ids(tok, [DEMO, DEMO, DEMO], "Q?", room=one + 5)
    assert ids == [1, *tok.encode(compare.few_shot_prompt([DEMO], "Q?"))]
    assert len(compare.base_prompt_ids(tok, [DEMO], "Q?" * 50, room=20)) == 20


def test_cut_at_stops():
    stops = compare.BASE_STOP_STRINGS
    assert compare.cut_at_stops("2 + 2 = 4.\n\nQuestion: x", stops) == "2 + 2 = 4."
    assert compare.cut_at_stops("The answer is 4.\nQuestion: y\n\n", stops) == "The answer is 4."
    assert compare.cut_at_stops("no stop", stops) == "no stop"


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


@pytest.mark.slow  # builds the tiny workdir (~60 s) unless another module already did
def test_compare_stage_end_to_end(compared):
    from gpt_jax.checkpoint import load_stage
    from gpt_jax.data import tasks_data
    from gpt_jax.heads import score
    from gpt_jax.tokenizer import Tokenizer
    from gpt_jax.train import reward, sft

    workdir, summary = compared
    config = config_from_tests("compare_test")
    assert summary["stage"] == "compare" and summary["prompts"] == 4
    assert summary["missing"] == ["ppo", "feedme"]
    assert list(summary["models"]) == ["base", "sft"]
    assert json.loads((workdir / "compare" / "summary.json").read_text()) == summary

    task, problems = tasks_data.task_problems(config, "heldout", str(workdir), n=4)
    rows = [json.loads(x) for x in (workdir / "compare" / "samples.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [p.id for p in problems]
    assert [r["prompt"] for r in rows] == [p.question for p in problems]

    tok = Tokenizer.load(str(workdir / "tokenizer" / "tokenizer.json"))
    rm_config, rm_params = reward.load_reward_model(str(workdir))
    score_rows = jax.jit(score, static_argnums=1)
    for name, m in summary["models"].items():
        assert set(m) == {"gold_reward", "accuracy", "rm_reward", "response_length",
                          "distinct_1", "distinct_2", "sample_entropy"}
        answers = [r["answers"][name] for r in rows]
        gold = [labeler.gold_score(p, a["text"]) for p, a in zip(problems, answers)]
        assert [a["gold"] for a in answers] == gold
        assert m["gold_reward"] == pytest.approx(np.mean(gold), abs=1e-12)
        assert m["accuracy"] == np.mean([labeler.is_correct(p, a["text"])
                                         for p, a in zip(problems, answers)])
        # The reward model's score of each answer, recomputed: prompt + answer + end token,
        # right-padded rows with their lengths.
        rows_ids = [tok.render_for_completion(task.prompt_messages(p)) + tok.encode(a["text"])
                    + [tok.token_id("assistant_end")] for p, a in zip(problems, answers)]
        tokens = np.full((len(rows_ids), rm_config.max_seq_len), tok.pad_id, np.int32)
        for i, ids in enumerate(rows_ids):
            tokens[i, :len(ids)] = ids
        expect = score_rows(rm_params, rm_config, tokens, np.asarray([len(x) for x in rows_ids]))
        assert [a["rm"] for a in answers] == pytest.approx(np.asarray(expect), abs=1e-4, rel=1e-4)
        assert m["rm_reward"] == pytest.approx(np.mean([a["rm"] for a in answers]), rel=1e-6)
        assert 0 < m["response_length"] <= 12
        assert 0 <= m["distinct_2"] <= 1 and 0 < m["distinct_1"] <= 1
        assert np.isfinite(m["sample_entropy"]) and m["sample_entropy"] > 0
    for a in (r["answers"]["base"] for r in rows):
        assert "\n\n" not in a["text"] and "\nQuestion:" not in a["text"]

    # The chat model's greedy answers are exactly SFT's own replies to the task prompts.
    model_config, params = load_stage(workdir, "sft")
    texts, _ = sft.generate_replies(params, model_config, tok,
                                    [task.prompt_messages(p) for p in problems], 12)
    assert [r["answers"]["sft"]["text"] for r in rows] == texts

    assert compare.run(config, str(workdir)) == summary  # done: skipped


@pytest.mark.slow
def test_report_shows_the_compare_stage(compared):
    from gpt_jax.report import fmt, write_report

    workdir, summary = compared
    text = write_report(workdir).read_text()
    base = summary["models"]["base"]
    assert (f"| base | {fmt(base['gold_reward'])} | {fmt(base['accuracy'])} | "
            f"{fmt(base['rm_reward'])} | {fmt(base['response_length'])} |") in text
    assert "Missing models: ppo, feedme." in text
