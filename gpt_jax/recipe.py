"""The recipe: run the stages of a pipeline config in order on one workdir.

`config.stages` is a comma-separated list of stage names; `config.<stage>` is that stage's full
config (the same ConfigDict its own experiment file gives). A stage whose summary.json exists is
skipped, and an interrupted stage resumes from its checkpoint, so re-running continues the recipe
where it stopped.
"""
from __future__ import annotations

import importlib.util
import time
from pathlib import Path

from gpt_jax.paths import REPO_ROOT
from gpt_jax.stages import stage_module


def load_experiment(name: str):
    """get_config() of experiments/configs/<name>.py."""
    path = REPO_ROOT / "experiments" / "configs" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"experiment_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def run(config, workdir: str) -> dict:
    stages = [s.strip() for s in config.stages.split(",") if s.strip()]
    summaries, timings = {}, {}
    for i, stage in enumerate(stages, 1):
        if stage not in config:
            raise KeyError(f"recipe stage {stage!r} has no config section config.{stage}")
        print(f"== recipe stage {i}/{len(stages)}: {stage}", flush=True)
        t0 = time.perf_counter()
        summaries[stage] = stage_module(config[stage].stage).run(config[stage], workdir)
        timings[stage] = time.perf_counter() - t0
    Path(workdir).mkdir(parents=True, exist_ok=True)
    return {"stages": stages, "seconds": timings, "summaries": summaries}
