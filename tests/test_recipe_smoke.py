"""The whole recipe (experiments/configs/recipe_smoke.py: every stage of recipe_tiny on a tiny
model) on the shipped data, then the report and the notebooks against its run; a second call
skips every stage."""
import json
from pathlib import Path

import pytest

from gpt_jax import recipe
from test_notebooks import execute, outputs

STAGES = ["tokenizer", "pretrain", "sft", "reward", "ppo", "bon", "feedme", "compare",
          "moderation", "memory"]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("smoke")
    out = recipe.run(recipe.load_experiment("recipe_smoke"), str(workdir))
    return workdir, out


@pytest.mark.slow
def test_recipe_runs_every_stage_and_writes_the_report(smoke_run):
    workdir, out = smoke_run
    assert out["stages"] == STAGES
    saved = json.loads((workdir / "recipe_summary.json").read_text())
    assert list(saved["seconds"]) == STAGES and all(s > 0 for s in saved["seconds"].values())
    assert saved["matmul_peak_gflops"]["start"] > 0 and saved["matmul_peak_gflops"]["end"] > 0
    for stage in STAGES:
        assert json.loads((workdir / stage / "summary.json").read_text()) == \
            json.loads(json.dumps(out["summaries"][stage]))
    assert out["summaries"]["ppo"]["sft"]["kl"] == 0.0
    assert out["summaries"]["compare"]["missing"] == []  # base, SFT, PPO and FeedME all compared
    memory = out["summaries"]["memory"]
    assert (memory["chunks"], memory["questions"], memory["recall_queries"]) == (400, 8, 40)
    assert "query_ms_10k" not in memory  # 400 facts: the 10k figure is not claimed
    assert memory["recall_at_5"] >= 0.9  # BM25 on the paraphrases, whatever the model
    answers = [json.loads(x) for x in (workdir / "memory" / "answers.jsonl").open()]
    assert len(answers) == 8 and all(len(a["hits"]) <= 3 for a in answers)
    assert memory["accuracy_with"] == sum(a["right_with"] for a in answers) / 8
    report = (workdir / "REPORT.md").read_text()
    assert "not run" not in report
    peaks = saved["matmul_peak_gflops"]
    assert f"| {peaks['start']:.1f} / {peaks['end']:.1f} GFLOP/s |" in report
    for png in ("ppo_reward_vs_kl.png", "bon_reward_vs_kl.png"):
        assert (workdir / "report" / png).stat().st_size > 0

    again = recipe.run(recipe.load_experiment("recipe_smoke"), str(workdir))  # all skipped
    assert again["summaries"] == out["summaries"]
    assert json.loads((workdir / "recipe_summary.json").read_text())["seconds"] == saved["seconds"]
    assert json.loads((workdir / "recipe_summary.json").read_text())["matmul_peak_gflops"] == \
        saved["matmul_peak_gflops"]  # nothing ran: the peaks the seconds were taken at


@pytest.mark.slow
def test_notebooks_on_the_smoke_run(smoke_run, tmp_path, monkeypatch):
    workdir, _ = smoke_run
    monkeypatch.setenv("GPT_JAX_WORKDIR", str(workdir))
    cells = execute("explore_run.ipynb", tmp_path)
    card, full = outputs(cells, "text/markdown")
    assert full == (workdir / "REPORT.md").read_text()
    monkeypatch.setenv("GPT_JAX_PROMPTS", "2")
    monkeypatch.setenv("GPT_JAX_MAX_NEW_TOKENS", "8")
    cells = execute("compare_models.ipynb", tmp_path)
    (table,) = outputs(cells, "text/markdown")
    assert table.count("| ppo | ") == 2 and table.count("| sft | ") == 2
    assert Path(workdir / "ppo" / "final").exists()
