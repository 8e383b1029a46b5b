"""Sweeps: grid expansion, run names, the exact dry-run commands (with and without --parent), key
validation, and a real 2-point sweep of a 2-step synthetic pretrain (results = each run's summary)."""
import csv
import json
from pathlib import Path

import pytest

from gpt_jax import sweep

REPO = Path(__file__).resolve().parent.parent
CONFIG = "tests/configs/pretrain_test.py"  # relative to the repository, as on the command line
SWEEP = "tests/sweeps/lr_test.py"


@pytest.fixture(autouse=True)
def in_repo(monkeypatch):
    monkeypatch.chdir(REPO)


def test_grid_is_the_product_last_axis_fastest():
    points = sweep.grid({"config.optim.learning_rate": [1e-3, 3e-3]},
                        train__total_steps=[2, 4], model__family=["gpt2"])
    assert points == [
        {"config.optim.learning_rate": 1e-3, "config.train.total_steps": 2,
         "config.model.family": "gpt2"},
        {"config.optim.learning_rate": 1e-3, "config.train.total_steps": 4,
         "config.model.family": "gpt2"},
        {"config.optim.learning_rate": 3e-3, "config.train.total_steps": 2,
         "config.model.family": "gpt2"},
        {"config.optim.learning_rate": 3e-3, "config.train.total_steps": 4,
         "config.model.family": "gpt2"},
    ]
    assert sweep.grid() == [{}]


def test_shipped_ppo_beta_sweep():
    points = sweep.load_sweep(REPO / "experiments" / "sweeps" / "ppo_beta.py")
    assert points == [{"config.ppo.kl_coef": v} for v in (0.01, 0.02, 0.05, 0.1)]
    assert sweep.run_names(points) == ["kl_coef=0.01", "kl_coef=0.02", "kl_coef=0.05",
                                       "kl_coef=0.1"]


def test_run_names_use_varying_keys_and_unique_suffixes():
    points = sweep.grid({"config.optim.learning_rate": [0.001, 0.01],
                         "config.ppo.learning_rate": [0.5], "config.ppo.kl_coef": [0.1, 0.2]})
    assert sweep.run_names(points) == [
        "optim.learning_rate=0.001__kl_coef=0.1", "optim.learning_rate=0.001__kl_coef=0.2",
        "optim.learning_rate=0.01__kl_coef=0.1", "optim.learning_rate=0.01__kl_coef=0.2"]
    assert sweep.run_names([{"config.a": 1}]) == ["run"]
    assert sweep.run_names([{"config.a": "x/y"}, {"config.a": "x/z"}]) == ["a=x-y", "a=x-z"]


def test_dry_run_prints_the_exact_commands(tmp_path):
    lines = []
    assert sweep.sweep(CONFIG, SWEEP, str(tmp_path / "sw"), dry_run=True, echo=lines.append) == []
    assert lines == [
        f"python -m gpt_jax.main --config={CONFIG} --config.optim.learning_rate=0.001 "
        f"--config.train.total_steps=2 --workdir={tmp_path}/sw/learning_rate=0.001",
        f"python -m gpt_jax.main --config={CONFIG} --config.optim.learning_rate=0.003 "
        f"--config.train.total_steps=2 --workdir={tmp_path}/sw/learning_rate=0.003",
    ]
    assert not (tmp_path / "sw").exists()


def test_dry_run_with_parent_links_only_upstream_stages(tmp_path):
    parent = tmp_path / "parent"
    for stage in ("tokenizer", "pretrain", "sft", "compare", "tokenizer.old-20261128-131132"):
        (parent / stage).mkdir(parents=True)
        (parent / stage / "summary.json").write_text("{}")  # moved aside: never linked
    (parent / "data_cache").mkdir()
    (parent / "scratch").mkdir()  # no summary: not a finished stage
    lines = []
    sweep.sweep(CONFIG, SWEEP, str(tmp_path / "sw"), parent=str(parent), dry_run=True,
                echo=lines.append)
    run = tmp_path / "sw" / "learning_rate=0.001"
    assert lines[0] == (
        f"mkdir -p {run} && ln -sfn {parent}/data_cache {run}/data_cache && "
        f"ln -sfn {parent}/tokenizer {run}/tokenizer && python -m gpt_jax.main "
        f"--config={CONFIG} --config.optim.learning_rate=0.001 --config.train.total_steps=2 "
        f"--workdir={run}")


def test_unknown_key_fails_before_running(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def get_sweep():\n    return [{'config.optim.learnin_rate': 1.0}]\n")
    with pytest.raises(KeyError, match="learnin_rate"):
        sweep.sweep(CONFIG, str(bad), str(tmp_path / "sw"), dry_run=True, echo=lambda s: None)


def test_flatten_keeps_scalar_leaves():
    assert sweep.flatten({"a": 1, "b": {"c": 2.5, "d": {"e": "x"}}, "f": [1, 2], "g": None}) == {
        "a": 1, "b.c": 2.5, "b.d.e": "x", "g": None}


@pytest.mark.slow  # two subprocess runs of ~20 s each (jax import + compile)
def test_real_sweep_writes_results_equal_to_each_summary(tmp_path):
    parent = tmp_path / "parent"
    (parent / "tokenizer").mkdir(parents=True)
    (parent / "tokenizer" / "summary.json").write_text("{}")
    workdir = tmp_path / "sw"
    metrics = ["final_train_loss", "final_eval_loss", "steps", "mesh.data"]
    rows = sweep.sweep(CONFIG, SWEEP, str(workdir), parent=str(parent), metrics=metrics,
                       echo=lambda s: None)
    assert [r["status"] for r in rows] == ["done", "done"]
    with open(workdir / "results.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 2
    assert list(table[0]) == ["run", "status", "optim.learning_rate", "train.total_steps",
                              *metrics]
    for row, lr in zip(table, (0.001, 0.003)):
        run = workdir / row["run"]
        summary = json.loads((run / "pretrain" / "summary.json").read_text())
        assert row["run"] == f"learning_rate={lr}"
        assert float(row["optim.learning_rate"]) == lr and row["train.total_steps"] == "2"
        assert float(row["final_train_loss"]) == summary["final_train_loss"]
        assert float(row["final_eval_loss"]) == summary["final_eval_loss"]
        assert int(row["steps"]) == summary["steps"] == 2
        assert int(row["mesh.data"]) == summary["mesh"]["data"]
        assert (run / "tokenizer").is_symlink()
        assert (run / sweep.LOG_NAME).exists()
        config = json.loads((run / "pretrain" / "config.json").read_text())
        assert config["optim"]["learning_rate"] == lr
    md = (workdir / "results.md").read_text().splitlines()
    assert len(md) == 4 and md[2].startswith("| learning_rate=0.001 | done | 0.001 | 2 |")

    echoed = []  # a second call skips both runs and rewrites the same results
    sweep.sweep(CONFIG, SWEEP, str(workdir), metrics=metrics, echo=echoed.append)
    assert sum("already done, skipped" in line for line in echoed) == 2
    with open(workdir / "results.csv", newline="") as f:
        assert list(csv.DictReader(f)) == table


@pytest.mark.parametrize("name", ["lora_rank.py", "lora_vs_sft960.py"])
def test_shipped_lora_sweeps_override_only_keys_of_the_preset(name):
    from gpt_jax.recipe import load_experiment

    config = load_experiment("sft_lora_tiny")
    points = sweep.load_sweep(REPO / "experiments" / "sweeps" / name)
    assert len(sweep.run_names(points)) == len(set(sweep.run_names(points))) == len(points)
    for point in points:
        for key in point:
            node = config
            for part in key.split(".")[1:]:
                assert part in node, f"{name}: {key} is not a key of sft_lora_tiny"
                node = node[part]
