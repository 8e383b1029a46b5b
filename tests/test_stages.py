"""Stage reuse is explicit (gpt_jax.stages): equal config -> reuse, other config or a re-run
upstream -> StageConfigMismatch naming what differs, --rerun moves the old dir aside. Fast: no
training here (tests/test_train_loop.py runs the same through the entry point)."""
import json

import ml_collections
import pytest

from gpt_jax import stages
from gpt_jax.metrics import write_summary
from gpt_jax.stages import StageConfigMismatch, begin_stage, config_diff


@pytest.fixture(autouse=True)
def _no_rerun():
    stages.set_rerun([])
    yield
    stages.set_rerun([])


def _config(stage="pretrain", lr=1e-3, steps=10, parent=None, progress=True):
    c = ml_collections.ConfigDict({"stage": stage, "optim": {"learning_rate": lr},
                                   "train": {"total_steps": steps, "progress_bar": progress}})
    if parent:
        c.parent = parent
    return c


def _finish(workdir, stage, config, **summary):
    stage_dir, done = begin_stage(config, workdir, stage)
    assert done is None
    write_summary(stage_dir, {"stage": stage, **summary})
    return stage_dir


def test_equal_config_is_reused_and_cosmetic_keys_are_ignored(tmp_path):
    _finish(tmp_path, "pretrain", _config(), loss=1.5)
    saved = (tmp_path / "pretrain" / "config.json").read_text()
    lineage = (tmp_path / "pretrain" / "lineage.json").read_text()
    for config in (_config(), _config(progress=False)):
        _, done = begin_stage(config, tmp_path, "pretrain")
        assert done == {"stage": "pretrain", "loss": 1.5}
    assert (tmp_path / "pretrain" / "config.json").read_text() == saved  # not rewritten
    assert (tmp_path / "pretrain" / "lineage.json").read_text() == lineage


def test_saved_config_with_the_retired_kill_hook_still_matches(tmp_path):
    old = _config()
    old.train.kill_at_step = 0  # in configs saved before the hook left train_config
    _finish(tmp_path, "pretrain", old, loss=1.5)
    _, done = begin_stage(_config(), tmp_path, "pretrain")
    assert done == {"stage": "pretrain", "loss": 1.5}


def test_changed_config_names_the_keys_and_the_ways_on(tmp_path):
    _finish(tmp_path, "pretrain", _config())
    with pytest.raises(StageConfigMismatch) as e:
        begin_stage(_config(lr=3e-3, steps=20), tmp_path, "pretrain")
    msg = str(e.value)
    assert "optim.learning_rate: 0.001 -> 0.003" in msg
    assert "train.total_steps: 10 -> 20" in msg
    assert "progress_bar" not in msg and "finished" in msg
    assert "--rerun=pretrain" in msg and "--workdir" in msg
    assert isinstance(e.value, ValueError)


def test_interrupted_stage_refuses_changed_hyperparameters(tmp_path):
    begin_stage(_config(), tmp_path, "pretrain")  # started, no summary.json: interrupted
    _, done = begin_stage(_config(), tmp_path, "pretrain")  # same config: resumes
    assert done is None
    with pytest.raises(StageConfigMismatch, match=r"interrupted[\s\S]*optim.learning_rate"):
        begin_stage(_config(lr=1.0), tmp_path, "pretrain")
    assert json.loads((tmp_path / "pretrain" / "config.json").read_text())["optim"][
        "learning_rate"] == 1e-3  # the saved config was not overwritten


def test_rerun_moves_the_old_dir_aside_once(tmp_path):
    _finish(tmp_path, "pretrain", _config(), loss=1.5)
    old_id = stages.run_id(tmp_path, "pretrain")
    stages.set_rerun("pretrain")
    _, done = begin_stage(_config(lr=3e-3), tmp_path, "pretrain")
    assert done is None
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("pretrain.old-")]
    assert len(aside) == 1
    assert json.loads((aside[0] / "summary.json").read_text())["loss"] == 1.5  # kept, not deleted
    assert stages.run_id(tmp_path, "pretrain") != old_id
    _, done = begin_stage(_config(lr=3e-3), tmp_path, "pretrain")  # same process: resumes
    assert done is None and len([p for p in tmp_path.iterdir() if ".old-" in p.name]) == 1


def test_rerun_upstream_makes_a_downstream_stage_stale(tmp_path):
    _finish(tmp_path, "pretrain", _config())
    sft = _config(stage="sft", parent="pretrain")
    sft_dir = _finish(tmp_path, "sft", sft)
    lineage = json.loads((sft_dir / "lineage.json").read_text())
    assert lineage["upstream"]["pretrain"] == stages.run_id(tmp_path, "pretrain")
    assert begin_stage(sft, tmp_path, "sft")[1] is not None  # upstream unchanged: reused
    stages.set_rerun("pretrain")
    _finish(tmp_path, "pretrain", _config())  # the same config, run anew
    with pytest.raises(StageConfigMismatch, match="upstream stage 'pretrain' was run anew"):
        begin_stage(sft, tmp_path, "sft")


def test_legacy_dirs_without_config_or_lineage_are_reused(tmp_path):
    (tmp_path / "tokenizer").mkdir()
    write_summary(tmp_path / "tokenizer", {"stage": "tokenizer"})
    assert begin_stage(_config("tokenizer"), tmp_path, "tokenizer")[1] == {"stage": "tokenizer"}


def test_upstream_stages_and_unknown_rerun_names():
    c = _config(stage="ppo", parent="sft")
    c.ppo = {"reward_stage": "reward"}
    assert stages.upstream_stages(c, "ppo") == ["reward", "sft", "tokenizer"]
    assert stages.upstream_stages(_config("tokenizer"), "tokenizer") == []
    with pytest.raises(KeyError, match="nope"):
        stages.set_rerun("sft,nope")
    assert config_diff({"a": {"b": 1}}, {"a": {"b": 1, "c": 2}}) == [("a.c", "<absent>", 2)]


def test_recipe_rerun_closure_takes_the_stages_that_read_it():
    from gpt_jax.recipe import rerun_closure

    config = ml_collections.ConfigDict()
    names = ["tokenizer", "pretrain", "sft", "reward", "ppo", "bon"]
    parents = {"pretrain": None, "sft": "pretrain", "reward": "sft", "ppo": "sft", "bon": "sft"}
    config.tokenizer = _config("tokenizer")
    for name, parent in parents.items():
        config[name] = _config(name, parent=parent)
    config.ppo.ppo = {"reward_stage": "reward"}
    stages.set_rerun("reward")
    assert rerun_closure(config, names) == ["reward", "ppo"]
    stages.set_rerun("sft")
    assert rerun_closure(config, names) == ["sft", "reward", "ppo", "bon"]
