"""recipe_seeds end to end at smoke sizes (experiments/configs/recipe_seeds_smoke.py, two seeds;
the sections the claims read, to keep the suite short): every section runs in each seed's own
workdir with that seed, the tokenizer is shared, the summary's per-seed numbers are the stages'
own, the claims follow their per-seed tests, the figures and the report section exist, and a
second call is skipped."""
import json
import os

import numpy as np
import pytest

from gpt_jax import recipe
from gpt_jax.recipe_seeds import run

SECTIONS = ["tokenizer", "pretrain", "sft", "reward", "reward_weak", "ppo_weak", "bon", "grpo",
            "dpo", "compare"]


@pytest.mark.slow
def test_recipe_seeds_smoke(tmp_path):
    config = recipe.load_experiment("recipe_seeds_smoke")
    config.recipe.stages = ",".join(SECTIONS)
    config.recipe.compare.compare.update(models="sft,grpo,dpo", pass_k="1,2,4,8",
                                         pass_k_samples=8)
    summary = run(config, str(tmp_path))
    root = tmp_path / "recipe_seeds"
    assert summary["seeds"] == [0, 1] and [r["seed"] for r in summary["per_seed"]] == [0, 1]
    for seed in (0, 1):
        seed_dir = root / f"seed{seed}"
        for section in SECTIONS:
            assert (seed_dir / section / "summary.json").exists(), (seed, section)
        for section in ("pretrain", "sft", "reward", "reward_weak", "ppo_weak", "grpo", "dpo"):
            saved = json.loads((seed_dir / section / "config.json").read_text())
            assert saved["seed"] == seed, (seed, section)
        assert json.loads((seed_dir / "compare" / "config.json").read_text())["seed"] == 0
    assert os.path.islink(root / "seed1" / "tokenizer")
    assert (root / "seed1" / "tokenizer").resolve() == (root / "seed0" / "tokenizer").resolve()
    # the seeds trained different models from the same tokenizer
    from gpt_jax.checkpoint import load_stage

    w0, w1 = (np.asarray(load_stage(root / f"seed{s}", "pretrain")[1]["wte"]) for s in (0, 1))
    assert w0.shape == w1.shape and not np.array_equal(w0, w1)

    for row in summary["per_seed"]:
        seed_dir = root / f"seed{row['seed']}"
        compare = json.loads((seed_dir / "compare" / "summary.json").read_text())
        for model in ("sft", "grpo", "dpo"):
            assert row["greedy"][model]["claim_accuracy"] == \
                compare["models"][model]["accuracy"]["L2"]["cot"]
        grpo = json.loads((seed_dir / "grpo" / "summary.json").read_text())
        assert row["sampled"]["grpo"]["kl"] == grpo["grpo"]["kl"]
        dpo = json.loads((seed_dir / "dpo" / "summary.json").read_text())
        assert row["sampled"]["dpo"]["kl"] == dpo["kl"]
        weak = row["curves"]["ppo_weak"]
        assert [r["step"] for r in weak] == [0, 2, 4, 6] and weak[0]["kl"] == 0.0
        assert set(row["bpb"]) == {"pretrain", "sft", "grpo", "dpo"}
        assert all(v > 0 for v in row["bpb"].values())
        assert row["checks"]["grpo_beats_sft"]["kl"] == grpo["grpo"]["kl"]
        gaps = row["checks"]["rl_narrows"]
        assert gaps["sft_gap"] == compare["models"]["sft"]["pass_at_k"]["8"] - \
            compare["models"]["sft"]["pass_at_k"]["1"]
        assert len(row["bon"]) == 3 and row["gao"]["bon_gold"]["points"] == 2
    for name, claim in summary["claims"].items():
        assert claim["passed"] == all(c["passed"] for c in claim["per_seed"]), name
        assert [c["seed"] for c in claim["per_seed"]] == [0, 1]
    for png in ("matched_kl.png", "overoptimization.png"):
        assert (root / png).stat().st_size > 0

    from gpt_jax.report import write_report

    report = write_report(tmp_path).read_text()
    section = report.split("## Post-training over seeds")[1].split("\n## ")[0]
    assert "could not render" not in section and "seeds_matched_kl.png" in section
    assert run(config, str(tmp_path)) == json.loads((root / "summary.json").read_text())
