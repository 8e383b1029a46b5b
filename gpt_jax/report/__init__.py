"""The run's report card: `python -m gpt_jax.report --workdir=runs/tiny` writes <workdir>/REPORT.md
and its figures under <workdir>/report/ (also `write_report(workdir) -> path`).

Why a separate step: it reads only what the stages left behind (each stage's summary.json,
metrics.jsonl and config.json, compare/samples.jsonl, and <workdir>/recipe_summary.json when a
recipe wrote one), so it can be rebuilt at any time, from a partial run or while later stages
still train, and it never changes a stage's outputs.

Layout: a title with the date and git commit; the report card (one headline metric per stage, and
the policies side by side); the environment (CPU, jax devices, mesh, wall time and parameters per
stage); then one section per stage: tokenizer, pretraining, SFT, reward model, PPO, best-of-N,
FeedME, compare, moderation, retrieval memory, and the evaluation suites once `python -m gpt_jax.eval` has run. A section whose stage has no summary.json says "not run"; a key a summary lacks
prints "n/a". A section that still fails to render says so in place rather than losing the report.

Code: gpt_jax/report/runfiles.py (reading a workdir, cell formatting), card.py (report card and
environment), sections_train.py (tokenizer, pretraining, SFT, reward model), sections_rlhf.py
(PPO, best-of-N, FeedME, compare), sections_product.py (moderation, memory, LoRA),
sections_seeds.py (post-training over whole-recipe seeds), sections_eval.py (the evaluation suites); this module orders the sections and writes the file, and
re-exports the helpers so `from gpt_jax.report import fmt, table, write_report, ...` keeps working.
"""
from __future__ import annotations

import argparse
import datetime
from pathlib import Path
from typing import Callable

from gpt_jax import report_plots as plots  # noqa: F401 - kept as gpt_jax.report.plots
from gpt_jax.report.card import (cot_accuracy, environment, git_commit, headline, jax_devices,
                                 matmul_peaks, param_count, policy_columns, report_card,
                                 wall_times)
from gpt_jax.report.runfiles import (ANSWER_CHARS, COMPARE_MODELS, SIDE_BY_SIDE_PROMPTS,
                                     STAGE_ORDER, RunFiles, escape_cell, fmt, get, image, table)
from gpt_jax.report.sections_eval import eval_section
from gpt_jax.report.sections_product import lora_section, memory_section, moderation_section
from gpt_jax.report.sections_rlhf import bon_section, compare_section, feedme_section, ppo_section
from gpt_jax.report.sections_seeds import seeds_section
from gpt_jax.report.sections_train import (pretrain_section, reward_section, sft_section,
                                           tokenizer_section)

__all__ = [
    "ANSWER_CHARS", "COMPARE_MODELS", "SECTIONS", "SIDE_BY_SIDE_PROMPTS", "STAGE_ORDER", "RunFiles",
    "Section", "bon_section", "compare_section", "cot_accuracy", "environment", "escape_cell",
    "eval_section",
    "feedme_section", "fmt", "get", "git_commit", "headline", "image", "jax_devices",
    "lora_section", "main", "memory_section",
    "matmul_peaks", "moderation_section", "param_count", "policy_columns", "ppo_section", "pretrain_section", "render",
    "report_card", "reward_section", "seeds_section", "sft_section", "table", "tokenizer_section", "wall_times",
    "write_report",
]


Section = Callable[[RunFiles, Path], list[str]]
OPTIONAL = {"eval", "lora_sft", "recipe_seeds"}  # sections left out (not "not run") until their command has run
SECTIONS: list[tuple[str, str | None, Section]] = [
    ("Report card", None, report_card),
    ("Environment", None, environment),
    ("Tokenizer", "tokenizer", tokenizer_section),
    ("Pretraining", "pretrain", pretrain_section),
    ("SFT", "sft", sft_section),
    ("Reward model", "reward", reward_section),
    ("PPO", "ppo", ppo_section),
    ("Best-of-N", "bon", bon_section),
    ("FeedME", "feedme", feedme_section),
    ("Compare: the models side by side", "compare", compare_section),
    ("Moderation", "moderation", moderation_section),
    ("Retrieval memory", "memory", memory_section),
    ("LoRA-SFT", "lora_sft", lora_section),
    ("Post-training over seeds", "recipe_seeds", seeds_section),
    ("Evaluation suites", "eval", eval_section),
]


def render(run: RunFiles, fig_dir: Path) -> str:
    lines = [f"# gpt_jax report: `{run.workdir}`", "",
             f"Generated {datetime.datetime.now().isoformat(timespec='seconds')}, "
             f"commit {git_commit()}.", ""]
    for title, stage, section in SECTIONS:
        if stage in OPTIONAL and run.summary(stage) is None:
            continue  # not a recipe stage: its section appears once it has run
        lines += [f"## {title}", ""]
        if stage is not None and run.summary(stage) is None:
            progress = run.metrics(stage)
            note = (f" (in progress: metrics up to step {progress[-1].get('step')})"
                    if progress else "")
            lines += [f"**not run**: no `{stage}/summary.json` in this workdir{note}.", ""]
            continue
        try:
            lines += section(run, fig_dir)
        except Exception as e:  # noqa: BLE001 - one bad section must not lose the whole report
            lines += [f"_could not render this section: {type(e).__name__}: {e}_"]
        lines.append("")
    text = "\n".join(lines).rstrip() + "\n"
    while "\n\n\n" in text:
        text = text.replace("\n\n\n", "\n\n")
    return text


def write_report(workdir: str | Path) -> Path:
    """Writes <workdir>/REPORT.md (figures in <workdir>/report/) and returns its path."""
    run = RunFiles(workdir)
    if not run.workdir.is_dir():
        raise FileNotFoundError(f"workdir {run.workdir} does not exist")
    text = render(run, run.workdir / "report")
    path = run.workdir / "REPORT.md"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gpt_jax.report",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True)
    args = parser.parse_args(argv)
    print(write_report(args.workdir))
    return 0
