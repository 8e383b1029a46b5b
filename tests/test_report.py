"""REPORT.md from hand-written stage outputs (tests/synthetic_run.py): every section with the exact
numbers, "not run" for absent stages, "n/a" for absent keys, the figures, the CLI."""
import json

import pytest

from gpt_jax import report
from synthetic_run import SUMMARIES, write_run

SECTIONS = ["## Report card", "## Environment", "## Tokenizer", "## Pretraining", "## SFT",
            "## Reward model", "## PPO", "## Best-of-N", "## FeedME",
            "## Compare: the models side by side", "## Moderation", "## Retrieval memory"]
FIGURES = ["pretrain_loss.png", "sft_loss.png", "reward_loss.png", "ppo_reward_vs_step.png",
           "ppo_reward_vs_kl.png", "bon_reward_vs_kl.png", "feedme_loss.png",
           "compare_accuracy.png", "moderation_loss.png"]


@pytest.fixture(scope="module")
def full_report(tmp_path_factory):
    workdir = write_run(tmp_path_factory.mktemp("full"), recipe_seconds={"pretrain": 600.5})
    return workdir, report.write_report(workdir).read_text()


def test_every_section_in_order_and_nothing_missing(full_report):
    _, text = full_report
    positions = [text.index(s + "\n") for s in SECTIONS]
    assert positions == sorted(positions)
    assert "not run" not in text
    assert "could not render" not in text


@pytest.mark.parametrize("line", [
    # report card
    "| tokenizer | bytes/token en / zh (vocab) | 3.1797 / 3.1222 (8,192) |",
    "| pretrain | eval loss nats/token (bits/byte) | 6.1110 (2.8056) |",
    "| sft | held-out masked loss; task accuracy / gold | 5.2297; 0.1250 / 0.1875 |",
    "| reward | held-out accuracy vs gold (length baseline) | 0.8225 (0.4913) |",
    "| ppo | gold reward SFT → PPO (KL) | 0.0100 → 0.5000 (3.2000) |",
    "| bon | gold reward at n=16 (KL analytic) | 0.2500 (1.8351) |",
    "| feedme | gold reward (KL) | 0.3125 (1.1250) |",
    "| compare | cot accuracy (mean of L1-L3) base / sft / ppo | 0.0000 / 0.2500 / 0.5000 |",
    "| moderation | held-out AUROC (TF-IDF baseline); FPR at 90% recall | 0.9902 (0.9920); "
    "0.0190 |",
    "| memory | recall@5; SFT answers with / without retrieval | 0.9980; 0.6150 / 0.0350 |",
    # retrieval memory
    "| recall@5 | 0.9980 | >= 0.9 |",
    "| ms per query (median, single query) | 0.5500 | <= 5 over 10k chunks |",
    "| with retrieval | 0.6150 |",
    "| without retrieval | 0.0350 |",
    "| with the fact given | 0.7200 |",
    "| Which locker does Mia Chen use? | 4821 | Mia Chen's locker number is 4821. | Mia Chen's "
    "locker number is 1234. |",
    # moderation
    "| AUROC | 0.9902 | 0.9920 |",
    "| FPR at 90% recall | 0.0190 | 0.0200 |",
    "| arithmetic:reply | 0.0000 |",
    "| lima | 0.1840 |",
    "On AUROC the model does **not** beat the baseline. Latency per single-text check (median, "
    "this host): 2.9000 ms. The server (`python -m gpt_jax.serve`) checks the user's input "
    "before decoding and the reply every 16 tokens, ending a flagged one with finish_reason "
    "\"content_filter\".",
    "| metric | base | SFT | PPO | best-of-16 | FeedME |",
    "| gold_reward | -0.0043 | 0.0100 | 0.5000 | 0.2500 | 0.3125 |",
    "| kl | n/a | 0.0000 | 3.2000 | 1.8351 | 1.1250 |",
    # environment: the recipe's seconds win over the summary's wall_seconds
    "| mesh (pretrain) | data=1 fsdp=1 tensor=1 |",
    "| parameters (pretrain model) | 5,322,240 |",
    "| pretrain | done | 600.5 s | recipe_summary.json | 5,322,240 |",
    "| sft | done | 136.0 s | summary wall_seconds | n/a |",
    "| tokenizer | done | 8.9 s | summary train_seconds | — |",
    "| wall time, all stages | 1,448.7 s |",  # moderation 71.0 s and memory 30.0 s included
    # tokenizer, pretraining, SFT
    "| bytes/token, held-out English | 3.1797 |",
    "| bytes/token, held-out Chinese | 3.1222 |",
    "| gutenberg_en | 5,600,000 |",
    "| final eval loss (nats/token) | 6.1110 |",
    "| eval bits per byte | 2.8056 |",
    "| tokens seen | 1,228,800 |",
    "| held-out masked loss (nats/token) | 5.2297 |",
    "| held-out assistant tokens | 4,995 |",
    "| task held-out accuracy | 0.1250 |",
    "| tokens/s | n/a |",  # the SFT summary has no tokens_per_sec
    # reward model
    "| labeler_vs_gold | 231 | 0.8225 | 0.4913 |",
    "| labeler_vs_labeler | 231 | 0.6970 | 0.4913 |",
    "| hh_rlhf_harmless_test | 200 | 0.4800 | 0.4250 |",
    "| oasst_en_trees | 179 | 0.5084 | 0.6844 |",
    "| bias offset | 0.5295 |",
    # PPO, best-of-N, FeedME
    "| SFT (start) | 0.0100 | 0.2500 | 0.0625 | 0.0000 |",
    "| PPO (end) | 0.5000 | 1.2500 | 0.4375 | 3.2000 |",
    "| 1 | 0.0200 | 0.3750 | n/a | n/a | 2.9000 |",
    "Over seeds (`ppo_seeds`): worst PPO seed vs best SFT seed, held-out gold 0.3750 vs 0.0200: "
    "passed.",
    "| gold gain over SFT | 0.4900 |",
    "| KL coefficient at the end (adaptive) | 0.0400 (yes) |",
    "| rollout / update seconds per step | n/a / n/a |",
    "| 4 | 0.1250 | 0.7500 | 0.1875 | 0.6363 | 0.5900 | 0.2500 | 0.2000 |",
    "| 16 | 0.2500 | 1.5000 | 0.3125 | 1.8351 | 1.7000 | 0.5000 | 0.4500 |",
    "| 0.3125 | 0.8750 | 0.2500 | 1.1250 |",
    "| SFT on the best of n samples, n | 8 |",
    "| distilled gold / RM reward | 0.7500 / n/a |",
    # compare
    "| sft | L2 | 0.1250 | 0.2500 | 0.7500 | 0.0000 |",
    "| ppo | L3 | 0.2500 | 0.5000 | 1.0000 | 0.0000 |",
    "| base | 0.0000 | 0.0000 | 0.0000 | -0.0043 | 1.0366 | 48.0000 | 0.7854 | 0.9814 | 5.9984 |",
    "| sft | 0.2500 | 0.4167 | 0.9600 | 0.0041 | 0.2668 | 34.0625 | 0.3232 | 0.6821 | 2.6677 |",
    "| L3/calc | Tom has 12 boxes. | 123 * 12 = 1476.<br>The answer is 1476. | yes |",
    "Missing models: feedme.",
    "| sft | 1.3000 | 0.4000 | 3 - 1 = 2.<br>The answer is 2. |",
    "| base | 0.0000 | 1.1000 | a \\| b |",
])
def test_exact_lines(full_report, line):
    _, text = full_report
    assert line in text.splitlines()


def test_figures_written_and_linked(full_report):
    workdir, text = full_report
    for name in FIGURES:
        path = workdir / "report" / name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert f"(report/{name})" in text


def test_partial_run_says_not_run(tmp_path):
    workdir = write_run(tmp_path, stages=["tokenizer", "pretrain"])
    (tmp_path / "ppo").mkdir()  # a PPO run in progress: metrics, no summary yet
    (tmp_path / "ppo" / "metrics.jsonl").write_text('{"step": 7, "gold_reward": 0.1}\n{"step')
    text = report.write_report(workdir).read_text()
    for section in SECTIONS:
        assert section + "\n" in text
    for stage in ("sft", "reward", "bon", "feedme", "compare"):
        assert f"**not run**: no `{stage}/summary.json` in this workdir." in text
    assert ("**not run**: no `ppo/summary.json` in this workdir (in progress: metrics up to "
            "step 7).") in text
    assert "| sft | held-out masked loss; task accuracy / gold | not run |" in text
    assert "| ppo | not run | n/a | n/a | n/a |" in text
    assert "| eval bits per byte | 2.8056 |" in text
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == ["pretrain_loss.png"]


def test_empty_and_malformed_runs_do_not_crash(tmp_path):
    text = report.write_report(tmp_path).read_text()
    assert text.count("**not run**") == 10
    # Summaries missing every key, a table of junk, and an unreadable metrics file.
    for stage in ("pretrain", "reward", "ppo", "bon", "compare", "memory"):
        (tmp_path / stage).mkdir()
        (tmp_path / stage / "summary.json").write_text(json.dumps({"stage": stage}))
    (tmp_path / "bon" / "summary.json").write_text(json.dumps({"table": [1, {"n": 2}]}))
    (tmp_path / "pretrain" / "metrics.jsonl").write_text("not json\n")
    text = report.write_report(tmp_path).read_text()
    assert "could not render" not in text
    assert "| final eval loss (nats/token) | n/a |" in text
    assert "| PPO (end) | n/a | n/a | n/a | n/a |" in text
    assert "| 2 | n/a | n/a | n/a | n/a | n/a |" in text
    assert "| set | pairs | RM accuracy | length baseline |" in text


def test_fmt_and_get():
    assert report.fmt(None) == "n/a"
    assert report.fmt(True) == "yes"
    assert report.fmt(1234567) == "1,234,567"
    assert report.fmt(2.80562) == "2.8056"
    assert report.fmt(4995.0, 0) == "4,995"
    assert report.fmt("nan") == "nan"
    assert report.get({"a": {"b": 3}}, "a.b") == 3
    assert report.get({"a": 1}, "a.b", "x") == "x"


def test_cli_prints_the_path(tmp_path, capsys):
    write_run(tmp_path, stages=["tokenizer"])
    assert report.main([f"--workdir={tmp_path}"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "REPORT.md")
    assert SUMMARIES["tokenizer"]["tokenizer_hash"] in (tmp_path / "REPORT.md").read_text()


def test_lora_section_appears_once_the_stage_ran(tmp_path):
    workdir = write_run(tmp_path, stages=["tokenizer", "pretrain", "sft"])
    assert "## LoRA-SFT" not in report.write_report(workdir).read_text()
    (workdir / "lora_sft").mkdir()
    (workdir / "lora_sft" / "summary.json").write_text(json.dumps({
        "stage": "lora_sft", "parent": "pretrain", "task_heldout_accuracy": 0.125,
        "heldout_masked_loss": 2.0, "accuracy_vs_full": 0.8, "loss_vs_full": 2.0 / 5.2297,
        "full_sft": {"task_heldout_accuracy": 0.125, "heldout_masked_loss": 5.2297, "steps": 480},
        "steps": 960,
        "heldout_problems_per_level": 200, "heldout_accuracy_mean": 0.2,
        "full_heldout_accuracy_mean": 0.25,
        "heldout_accuracy": {"L1": {"direct": 0.1, "cot": 0.3}, "L2": {"direct": 0, "cot": 0.4}},
        "full_heldout_accuracy": {"L1": {"direct": 0.2, "cot": 0.3},
                                  "L2": {"direct": 0, "cot": 0.5}},
        "lora": {"rank": 8, "alpha": 16.0, "targets": ["q", "v"], "token_ids": [0, 1, 2],
                 "average_steps": 320},
        "optimizer_bytes": 1000, "optimizer_bytes_full": 100000,
        "optimizer_memory_vs_full": 0.01, "trainable_params": 500,
        "trainable_fraction": 0.005, "adapter_bytes": 4096, "merge_max_abs_diff": 3e-6,
        "trainable_fraction_by_d_model": {"128": 0.062, "1024": 0.012}}))
    text = report.write_report(workdir).read_text()
    assert ("SFT's data and evaluation, 960 steps (full SFT: 480), training rank-8 adapters "
            "(alpha 16.0) on q, v of the frozen `pretrain` model, against the full SFT stage of "
            "this workdir; the adapter kept is its mean over the last 320 steps.") in text
    assert ("| held-out accuracy (greedy, mean of level x mode, 200 problems per level) | "
            "0.2000 | 0.2500 | 0.8000 |") in text
    assert "| level | direct | cot |" in text
    assert "| L2 | 0 / 0 | 0.4000 / 0.5000 |" in text
    assert "output columns of 3 special tokens" in text
    assert "| optimizer state (bytes) | 1,000 | 100,000 | 0.0100 |" in text
    assert "changes logits by at most 3.00e-06." in text
    assert "| d_model | 128 | 1024 |" in text
    assert "| trained params / model | 0.0620 | 0.0120 |" in text
