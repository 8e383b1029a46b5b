"""The recipe: run the stages of a pipeline config in order on one workdir, then the report card.

`config.stages` is a comma-separated list of stage names; `config.<stage>` is that stage's full
config (the same ConfigDict its own experiment file gives). A finished stage is skipped and an
interrupted one resumes from its checkpoint when its saved config matches (else
`gpt_jax.stages.StageConfigMismatch`), so re-running continues the recipe where it stopped.
`--rerun=X` moves X's directory aside and reruns it, and with it every later recipe stage that
reads X directly or indirectly (`rerun_closure`; docs/stages.md).
Progress: one line per stage ("[recipe 3/8] sft", elapsed time) above the stage's own bar. At the end `<workdir>/recipe_summary.json` records each stage's seconds (a
skipped stage keeps the seconds of the run that did it, else its summary's wall_seconds), the
float32 matmul peak measured before and after the stages that ran (GFLOP/s: wall times on shared
CPUs only compare at a known peak; a run that only skips keeps the earlier peaks) and, unless
`config.report` is False, `gpt_jax.report` writes `<workdir>/REPORT.md`.
"""
from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

from gpt_jax.paths import REPO_ROOT
from gpt_jax.stages import move_aside, stage_module


RECIPE_STAGES = ("tokenizer", "pretrain", "sft", "reward", "ppo", "bon", "feedme", "compare",
                 "moderation", "memory")


def pipeline_config(stages=RECIPE_STAGES, report: bool = True):
    """The top of a recipe config: stage "recipe", the stage list, whether to write REPORT.md; the
    caller adds one section per stage (`config.<stage>` = that stage's config)."""
    import ml_collections

    config = ml_collections.ConfigDict()
    config.stage = "recipe"
    config.stages = ",".join(stages)
    config.report = report
    return config


def load_experiment(name: str):
    """get_config() of experiments/configs/<name>.py."""
    path = REPO_ROOT / "experiments" / "configs" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"experiment_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def rerun_closure(config, stages) -> list[str]:
    """The recipe stages that --rerun asks for plus, in recipe order, every later stage that
    reads one of them (directly or through another): their results are stale once it reruns.
    Marks them rerun (the recipe moves their directories itself)."""
    from gpt_jax.stages import mark_rerun, rerun_requested, upstream_stages

    chosen: list[str] = []
    for stage in stages:
        ups = set(upstream_stages(config[stage], config[stage].stage))
        if stage == "ppo_seeds":
            ups.add("ppo")  # it links ppo_seed<n> -> ppo when the configs match
        if rerun_requested(stage) or ups & set(chosen):
            chosen.append(stage)
    for stage in chosen:
        mark_rerun(stage)
    return chosen


def run_section(config, section: str, workdir: str) -> dict:
    """Runs `config.<section>` in `<workdir>/<section>`: a section named otherwise than its
    stage (`reward_weak` of stage "reward", `ppo_ptx` of stage "ppo") is a second run of that
    stage in its own directory (stages that take `stage=`: reward, ppo, grpo, dpo)."""
    kind = config[section].stage
    module = stage_module(kind)
    if section == kind:
        return module.run(config[section], workdir)
    return module.run(config[section], workdir, stage=section)


def _clock(seconds: float) -> str:
    return f"{int(seconds // 60)}:{int(seconds % 60):02d}"


def run(config, workdir: str) -> dict:
    from gpt_jax.flops import measure_matmul_peak
    from gpt_jax.metrics import read_summary

    stages = [s.strip() for s in config.stages.split(",") if s.strip()]
    for stage in stages:
        if stage not in config:
            raise KeyError(f"recipe stage {stage!r} has no config section config.{stage}")
    Path(workdir).mkdir(parents=True, exist_ok=True)
    for stage in rerun_closure(config, stages):  # --rerun=X: X and the recipe stages reading it
        move_aside(workdir, stage)
    path = Path(workdir) / "recipe_summary.json"
    previous = json.loads(path.read_text()) if path.exists() else {}
    pending = [s for s in stages if read_summary(Path(workdir) / s) is None]
    summaries, timings = {}, {}
    peak_start = measure_matmul_peak(repeats=3) / 1e9 if pending else None
    t_start = time.perf_counter()
    for i, stage in enumerate(stages, 1):
        done = stage not in pending
        print(f"[recipe {i}/{len(stages)}] {stage}{' (done, skipped)' if done else ''} "
              f"(elapsed {_clock(time.perf_counter() - t_start)})", flush=True)
        t0 = time.perf_counter()
        summaries[stage] = run_section(config, stage, workdir)
        if done:  # the seconds of the run that did it: an earlier recipe's, or the stage's own
            timings[stage] = (previous.get("seconds", {}).get(stage)
                              or summaries[stage].get("wall_seconds") or 0.0)
        else:
            timings[stage] = time.perf_counter() - t0
    # the peaks belong with the seconds: a run that only skipped keeps those of the run that timed
    peaks = ({"start": peak_start, "end": measure_matmul_peak(repeats=3) / 1e9} if pending
             else previous.get("matmul_peak_gflops"))
    out = {"stages": stages, "seconds": timings, "total_seconds": sum(timings.values()),
           "matmul_peak_gflops": peaks}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(out, indent=2) + "\n")
    tmp.replace(path)
    if config.get("report", True):
        from gpt_jax.report import write_report

        report = write_report(workdir)
        print(f"[recipe] report: {report} (total {_clock(out['total_seconds'])})", flush=True)
    return {**out, "summaries": summaries}
