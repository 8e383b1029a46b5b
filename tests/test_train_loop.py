"""The shared loop through the real entry point: exact resume after SIGKILL, the non-finite
guard, config validation, metrics and summary files."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from gpt_jax.metrics import read_metrics

REPO = Path(__file__).resolve().parent.parent
CONFIG = str(REPO / "tests" / "configs" / "pretrain_test.py")


def _main(workdir, *overrides, check=True, kill_at_step=0, config=CONFIG):
    """gpt_jax.main in a subprocess; with kill_at_step (a step, or "after-row:N" /
    "during-save:N"), SIGKILLed at that point (tests/kill_after_checkpoint.py)."""
    entry = (["-m", "gpt_jax.main"] if not kill_at_step else
             [str(REPO / "tests" / "kill_after_checkpoint.py"), str(kill_at_step)])
    cmd = [sys.executable, *entry, f"--config={config}", f"--workdir={workdir}", *overrides]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def _losses(workdir):
    rows = read_metrics(Path(workdir) / "pretrain" / "metrics.jsonl")
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_resume_after_sigkill_is_bitwise_exact(tmp_path, optimizer):
    """Muon's state (partitioned, with empty MaskedNodes) checkpoints and resumes as AdamW's does."""
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    opt = f"--config.optim.name={optimizer}"
    _main(straight, opt)
    killed = _main(crashed, opt, check=False, kill_at_step=10)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not (crashed / "pretrain" / "summary.json").exists()
    assert max(_losses(crashed)) == 10
    with open(crashed / "pretrain" / "metrics.jsonl", "a") as f:
        f.write('{"step": 11, "loss": 3.')  # a row torn by a kill mid-write
    _main(crashed, opt)  # resumes from the step-10 checkpoint
    a, b = _losses(straight), _losses(crashed)
    assert sorted(b) == list(range(1, 21))
    lines = (crashed / "pretrain" / "metrics.jsonl").read_text().splitlines()
    assert all(json.loads(line) for line in lines)  # the torn row is gone, nothing duplicated
    assert len(lines) == len((straight / "pretrain" / "metrics.jsonl").read_text().splitlines())
    for step in range(11, 21):
        assert a[step] == b[step], (step, a[step], b[step])  # bitwise on CPU

    summary = json.loads((straight / "pretrain" / "summary.json").read_text())
    for key in ("final_train_loss", "final_eval_loss", "eval_bits_per_byte", "tokens_seen",
                "tokens_per_sec", "wall_seconds", "num_params"):
        assert key in summary
    assert summary["tokens_seen"] == 20 * 8 * 16
    rows = read_metrics(straight / "pretrain" / "metrics.jsonl")
    assert [r["step"] for r in rows if "eval_loss" in r] == [10, 20]
    by_step = {r["step"]: r for r in rows if "loss" in r}
    assert by_step[7]["tokens_by_source"] == {"synthetic": 7 * 8 * 16}
    resumed = {r["step"]: r for r in read_metrics(crashed / "pretrain" / "metrics.jsonl") if "loss" in r}
    assert resumed[20]["tokens_by_source"] == {"synthetic": 20 * 8 * 16}
    assert summary["tokens_by_source"] == {"synthetic": 20 * 8 * 16}
    assert (straight / "pretrain" / "checkpoints").is_dir()


@pytest.mark.slow  # four pipeline runs of 20 steps (~1-2 min on 2 cores)
def test_kills_on_the_grain_pipeline_resume_bitwise(tmp_path, data_dir):
    """SIGKILL between checkpoints (with a torn last metrics row) and during an asynchronous save,
    on the real grain pipeline: each resume gives the uninterrupted run's losses bitwise, and the
    metrics file ends with every step once and no torn row."""
    from gpt_jax.tokenizer import train_bpe

    text = (data_dir / "pretrain/tinyshakespeare/input.txt").read_text()[:50_000]
    tok = train_bpe([text[i: i + 2000] for i in range(0, len(text), 2000)], vocab_size=384)
    config = str(REPO / "tests" / "configs" / "pretrain_pipeline_test.py")
    cache = f"--config.data.cache_dir={tmp_path / 'cache'}"
    runs = {}
    for name in ("straight", "between", "during_save"):
        (tmp_path / name / "tokenizer").mkdir(parents=True)
        tok.save(tmp_path / name / "tokenizer" / "tokenizer.json")
        runs[name] = tmp_path / name
    _main(runs["straight"], cache, config=config)
    straight = _losses(runs["straight"])
    assert sorted(straight) == list(range(1, 21))
    for name, spec, last_row in (("between", "after-row:13", 13),
                                 ("during_save", "during-save:10", 10)):
        killed = _main(runs[name], cache, config=config, check=False, kill_at_step=spec)
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
        assert max(_losses(runs[name])) == last_row
        if name == "between":
            with open(runs[name] / "pretrain" / "metrics.jsonl", "a") as f:
                f.write('{"step": 14, "loss": 3.')  # torn by the kill mid-write
        _main(runs[name], cache, config=config)
        lines = (runs[name] / "pretrain" / "metrics.jsonl").read_text().splitlines()
        rows = [json.loads(line) for line in lines]
        train_steps = [r["step"] for r in rows if "loss" in r]
        assert train_steps == list(range(1, 21)), name  # each step once, in order
        assert _losses(runs[name]) == straight, name  # bitwise on CPU


def test_completed_stage_is_skipped(tmp_path):
    _main(tmp_path, "--config.train.total_steps=2")
    summary = (tmp_path / "pretrain" / "summary.json").read_text()
    proc = _main(tmp_path, "--config.train.total_steps=2")
    assert (tmp_path / "pretrain" / "summary.json").read_text() == summary
    assert json.loads(proc.stdout[proc.stdout.index("{"):])["steps"] == 2


def test_stage_killed_before_its_summary_reports_its_last_figures(tmp_path):
    """Killed after the final checkpoint, before summary.json: the rerun resumes at the last
    step, trains nothing, and its summary carries the figures that step logged."""
    _main(tmp_path)
    first = json.loads((tmp_path / "pretrain" / "summary.json").read_text())
    (tmp_path / "pretrain" / "summary.json").unlink()
    _main(tmp_path)
    again = json.loads((tmp_path / "pretrain" / "summary.json").read_text())
    for key in ("final_train_loss", "final_eval_loss", "tokens_per_sec", "mfu"):
        assert again[key] == first[key] and first[key] is not None, key


def test_changed_config_is_refused_and_rerun_moves_the_old_stage_aside(tmp_path):
    _main(tmp_path, "--config.train.total_steps=2")
    first = json.loads((tmp_path / "pretrain" / "summary.json").read_text())
    proc = _main(tmp_path, "--config.train.total_steps=3", check=False)
    assert proc.returncode != 0
    assert "StageConfigMismatch" in proc.stderr and "train.total_steps: 2 -> 3" in proc.stderr
    assert "--rerun=pretrain" in proc.stderr
    assert json.loads((tmp_path / "pretrain" / "summary.json").read_text()) == first
    _main(tmp_path, "--config.train.total_steps=3", "--rerun=pretrain")
    assert json.loads((tmp_path / "pretrain" / "summary.json").read_text())["steps"] == 3
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("pretrain.old-")]
    assert len(aside) == 1 and json.loads((aside[0] / "summary.json").read_text()) == first


def test_resumed_stage_refuses_changed_hyperparameters(tmp_path):
    killed = _main(tmp_path, check=False, kill_at_step=5)
    assert killed.returncode == -signal.SIGKILL
    proc = _main(tmp_path, "--config.optim.learning_rate=0.5", check=False)
    assert proc.returncode != 0 and "interrupted" in proc.stderr
    assert "optim.learning_rate" in proc.stderr
    _main(tmp_path)  # the original config resumes and finishes
    assert sorted(_losses(tmp_path)) == list(range(1, 21))


def test_nonfinite_loss_stops_with_step_and_keeps_last_good_checkpoint(tmp_path):
    # A huge learning rate makes the loss blow up; the error must name the steps, and no
    # checkpoint of a state that failed is left to resume from.
    import re

    proc = _main(tmp_path, "--config.optim.learning_rate=1e12", "--config.optim.grad_clip=0",
                 "--config.optim.warmup_steps=0", "--config.train.checkpoint_every=1",
                 check=False)
    assert proc.returncode != 0
    assert "non-finite loss" in proc.stderr and "consecutive non-finite steps" in proc.stderr
    found = re.search(r"non-finite loss \S+ at step (\d+).*steps (\d+)-(\d+)", proc.stderr)
    step, first = int(found.group(1)), int(found.group(2))
    assert step - first + 1 == 3  # train.max_nonfinite_steps
    ckpts = sorted(int(p.name) for p in (tmp_path / "pretrain" / "checkpoints").iterdir()
                   if p.name.isdigit())
    assert all(k < first - 1 for k in ckpts)  # the state that failed is not resumable
    assert (tmp_path / "pretrain" / "checkpoints_nonfinite" / str(first - 1)).is_dir()


def test_injected_inf_never_reaches_params_and_the_kept_checkpoint_resumes_finite(
        tmp_path, monkeypatch):
    """From step 8 on the learning rate is inf: each update would make the params inf, so it is
    skipped; the run stops after 3 such steps, the newest checkpoint holds finite params and the
    resume from it (normal lr) trains on with finite losses."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import pytest

    from gpt_jax.checkpoint import load_stage
    from gpt_jax.stages import stage_module
    from gpt_jax.train import optim
    from gpt_jax.train.loop import NonFiniteLossError
    from tiny_workdir import config_from_tests

    config = config_from_tests("pretrain_test")
    real = optim.learning_rate_schedule

    def poisoned(cfg, total_steps):
        base = real(cfg, total_steps)
        return lambda step: jnp.where(step >= 7, jnp.inf, base(step))  # 0-based: step 8 on

    monkeypatch.setattr(optim, "learning_rate_schedule", poisoned)
    pretrain = stage_module("pretrain")
    with pytest.raises(NonFiniteLossError, match="steps 8-10"):
        pretrain.run(config, str(tmp_path))
    rows = read_metrics(tmp_path / "pretrain" / "metrics.jsonl")
    assert [r["nonfinite"] for r in rows if "loss" in r][6:] == [0.0, 1.0, 1.0, 1.0]
    _, params = load_stage(tmp_path, "pretrain")  # the newest checkpoint: step 5
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(params))
    assert sorted(int(p.name) for p in (tmp_path / "pretrain" / "checkpoints").iterdir()
                  if p.name.isdigit())[-1] == 5

    monkeypatch.setattr(optim, "learning_rate_schedule", real)
    summary = pretrain.run(config, str(tmp_path))  # resumes from step 5
    losses = _losses(tmp_path)
    assert sorted(losses) == list(range(1, 21))
    assert all(np.isfinite(losses[s]) for s in range(6, 21))
    assert np.isfinite(summary["final_train_loss"])


def test_non_tty_progress_is_one_plain_line_per_log_step(tmp_path):
    env_progress = os.environ.pop("GPT_JAX_PROGRESS", None)
    try:
        proc = _main(tmp_path, "--config.train.progress_bar=True",
                     "--config.train.total_steps=6", "--config.train.log_every=2")
    finally:
        if env_progress is not None:
            os.environ["GPT_JAX_PROGRESS"] = env_progress
    assert "\r" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("pretrain step ")]
    assert [line.split()[2] for line in lines] == ["2/6", "4/6", "6/6"], proc.stderr[-2000:]
    assert all("loss=" in line and "lr=" in line and "tok_s=" in line for line in lines)


def test_unknown_config_key_is_rejected_by_name(tmp_path):
    proc = _main(tmp_path, "--config.train.no_such_key=3", check=False)
    assert proc.returncode != 0
    assert "no_such_key" in proc.stderr
    assert not (tmp_path / "pretrain").exists()
