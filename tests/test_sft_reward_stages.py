"""The SFT and reward stages end to end on a tiny workdir (tokenizer + a 2-step pretrain), through
their `run` functions: files, summary keys, parent initialisation, skip when done."""
import json

import numpy as np
import pytest

from helpers import load_test_config, pretrained_workdir



@pytest.fixture(scope="module")
def workdir(tmp_path_factory, data_dir):
    return pretrained_workdir(tmp_path_factory.mktemp("stages"), data_dir)


@pytest.mark.slow
def test_sft_then_reward_stage(workdir):
    from gpt_jax.train import reward, sft

    summary = sft.run(load_test_config("sft_test"), str(workdir))
    for key in ("heldout_masked_loss", "task_heldout_accuracy", "task_heldout_gold_score",
                "mixture_weights", "wall_seconds"):
        assert key in summary
    assert np.isfinite(summary["heldout_masked_loss"])
    assert set(summary["mixture_weights"]) == {"identity", "task:arithmetic"}
    samples = (workdir / "sft" / "samples.jsonl").read_text().splitlines()
    assert {json.loads(s)["step"] for s in samples} == {2, 4}
    assert sft.run(load_test_config("sft_test"), str(workdir)) == summary  # done: skipped

    rs = reward.run(load_test_config("reward_test"), str(workdir))
    acc = rs["heldout_accuracy"]
    assert set(acc) == {"labeler_vs_gold", "labeler_vs_labeler", *reward.HUMAN_SETS}
    for name, row in acc.items():
        assert set(row) == {"accuracy", "length_baseline", "pairs"}
        assert 0 <= row["accuracy"] <= 1 and row["pairs"] > 0, (name, row)
    assert rs["comparisons"] == {"train": 8, "heldout": 8}
    assert np.isfinite(rs["bias_offset"])
    # The saved model has the offset applied: demonstrations now score ~0 on average.
    model_config, params = reward.load_reward_model(str(workdir))
    assert set(params) == {"trunk", "head"}
    rows = [json.loads(x) for x in (workdir / "reward" / "comparisons.jsonl").read_text().splitlines()]
    assert len(rows) == 16 and all(len(r["completions"]) == 3 for r in rows)
    from gpt_jax.data import ranking as R
    from gpt_jax.data import tasks_data
    from gpt_jax.tokenizer import Tokenizer

    cfg = load_test_config("reward_test")
    tok = Tokenizer.load(str(workdir / "tokenizer" / "tokenizer.json"))
    demos = tasks_data.sft_demonstrations(cfg, str(workdir), cfg.reward.bias_demos)
    examples = [R.encode_ranking(tok, m, [r], cfg.train.seq_len) for m, r in demos]
    scores = np.concatenate(reward.make_scorer(model_config, None, 16, cfg.train.seq_len)(
        params, examples))
    assert len(scores) == rs["bias_demos"] and abs(scores.mean()) < 1e-4
