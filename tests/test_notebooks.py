"""The notebooks run headless (nbclient, the venv's "python3" kernel) against small runs given by
their environment variables, and show what they promise; the committed copies carry no outputs."""
import json
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from synthetic_run import METRICS, write_run
from tiny_workdir import shared_tiny_workdir

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def execute(name: str, tmp_path: Path, timeout: int = 300) -> list:
    """Runs notebooks/<name> in a fresh kernel; returns its executed cells (raises on an error)."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(nb, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    return nb.cells


def outputs(cells, kind: str) -> list:
    """Text of stream outputs ("stream"), markdown displays ("text/markdown"), or the count of
    figures ("image/png" -> one entry per figure)."""
    out = []
    for cell in cells:
        for o in cell.get("outputs", []):
            if kind == "stream" and o.output_type == "stream":
                out.append(o.text)
            elif o.output_type in ("display_data", "execute_result") and kind in o.data:
                out.append(o.data[kind])
    return out


@pytest.mark.parametrize("name", ["explore_run.ipynb", "compare_models.ipynb",
                                  "sweep_results.ipynb"])
def test_committed_without_outputs(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None


def test_explore_run(tmp_path, monkeypatch):
    workdir = write_run(tmp_path / "run")
    monkeypatch.setenv("GPT_JAX_WORKDIR", str(workdir))
    cells = execute("explore_run.ipynb", tmp_path)
    counts = {s: len(METRICS[s]) for s in ("pretrain", "sft", "reward", "ppo", "feedme",
                                           "moderation")}
    assert outputs(cells, "stream") == [f"{workdir}\n{counts}\n"]
    assert len(outputs(cells, "image/png")) == len(counts)  # one figure per stage with metrics
    card, full = outputs(cells, "text/markdown")
    assert "| ppo | gold reward SFT → PPO (KL) | 0.0100 → 0.5000 (3.2000) |" in card
    assert "## Environment" not in card and "## Environment" in full
    assert full == (workdir / "REPORT.md").read_text()


def test_sweep_results(tmp_path, monkeypatch):
    sweep_dir = tmp_path / "sweep"
    sweep_dir.mkdir()
    (sweep_dir / "results.csv").write_text(
        "run,status,ppo.kl_coef,ppo.gold_reward,ppo.kl,steps\n"
        "kl_coef=0.01,done,0.01,0.5,3.2,10\n"
        "kl_coef=0.1,done,0.1,0.25,0.8,10\n")
    (sweep_dir / "results.md").write_text("| run |\n|---|\n| kl_coef=0.01 |\n| kl_coef=0.1 |\n")
    monkeypatch.setenv("GPT_JAX_SWEEP", str(sweep_dir))
    cells = execute("sweep_results.ipynb", tmp_path)
    assert outputs(cells, "text/markdown") == [(sweep_dir / "results.md").read_text()]
    assert len(outputs(cells, "image/png")) == 1

    from gpt_jax import notebook_utils as nu

    rows = nu.read_results(sweep_dir)
    assert rows[1] == {"run": "kl_coef=0.1", "status": "done", "ppo.kl_coef": 0.1,
                       "ppo.gold_reward": 0.25, "ppo.kl": 0.8, "steps": 10}
    fig = nu.plot_sweep(rows)  # x = the swept key; panels = metrics that vary (not steps)
    assert [ax.get_title() for ax in fig.axes if ax.get_title()] == ["ppo.gold_reward", "ppo.kl"]


@pytest.mark.slow  # builds the tiny workdir (~60 s) unless test_compare.py already did
def test_compare_models(tmp_path, monkeypatch, tmp_path_factory, data_dir):
    from gpt_jax import labeler
    from gpt_jax import notebook_utils as nu
    from gpt_jax.data import tasks_data

    workdir = shared_tiny_workdir(tmp_path_factory, data_dir)
    monkeypatch.setenv("GPT_JAX_WORKDIR", str(workdir))
    monkeypatch.setenv("GPT_JAX_PROMPTS", "2")
    monkeypatch.setenv("GPT_JAX_MAX_NEW_TOKENS", "8")
    cells = execute("compare_models.ipynb", tmp_path)
    assert "missing: ['ppo']\n" in outputs(cells, "stream")
    (table,) = outputs(cells, "text/markdown")
    assert table.count("| base | ") == 2 and table.count("| sft | ") == 2

    # The helper behind it: gold scores are the labeler's on the shown texts, RM scores present.
    rows, missing = nu.side_by_side(workdir, n_prompts=2, max_new_tokens=8)
    assert missing == ["ppo"]
    _, problems = tasks_data.rl_problems(nu.task_config(workdir), "heldout", str(workdir), n=2)
    for row, p in zip(rows, problems):
        assert row["prompt"] == p.question and set(row["answers"]) == {"base", "sft"}
        for a in row["answers"].values():
            assert a["gold"] == labeler.gold_score(p, a["text"])
            assert isinstance(a["rm"], float)
    means = nu.model_means(rows)
    assert json.loads(json.dumps(means)) == means and set(means) == {"base", "sft"}
