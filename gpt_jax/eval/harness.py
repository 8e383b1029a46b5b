"""The evaluation harness: score any finished stage on standard benchmarks and the project's own
tasks, side by side (`python -m gpt_jax.eval --workdir=runs/tiny`).

Suites (each a module of `gpt_jax.eval`):
- `mmlu`: k-shot log-likelihood multiple choice (lm-evaluation-harness style), per subject,
  micro and macro;
- `bpb`: bits per byte on the held-out split of every pretraining source;
- `arith`: the arithmetic task's levels x answer modes, pass@k, format validity (the compare
  stage's evaluation, one implementation);
- `gsm8k`: exact match of the final number, few-shot for the base model, the chat template for
  chat stages, without and with the calculator (`gpt_jax.eval.generative`);
- `winrate`: chat stages' answers to AlpacaEval's instructions against the shipped reference
  outputs, judged by the project's reward model (a proxy), raw and length-controlled;
- `rm`: the reward model's pairwise accuracy on held-out labeler and human pairs (a property of
  the `reward` stage, reported once).

Resumable and never stale: every finished unit of work (a subject of MMLU, a source of bpb, a
stage's suite) is appended to `<workdir>/eval/parts.jsonl` under a key that hashes the suite's
settings and the stage's `summary.json`; a rerun skips the units whose key is there (a killed
eval continues where it stopped) and recomputes any whose settings or stage changed.
`<workdir>/eval/summary.json` holds the table: {"stages": {stage: {suite: metrics}}, "limits"
(per suite), "identities" (per stage), "chance", ...}; suites not run by this command keep their
earlier results while their stage is unchanged, so suites can be run one command at a time (with
different `--limit`s). The report's evaluation section reads it.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Callable

import ml_collections

from gpt_jax.metrics import read_summary, write_summary

SUITES = ("mmlu", "bpb", "arith", "gsm8k", "winrate", "rm")
STAGES = ("pretrain", "sft", "ppo", "feedme", "grpo", "dpo")
CHAT_STAGES = STAGES[1:]
CHANCE = {"mmlu": 0.25, "rm": 0.5, "winrate": 0.5}


def eval_config(**overrides) -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict({
        "stages": "",            # comma-separated; "" = every finished stage of STAGES
        "suites": ",".join(SUITES),
        "limit": 0,              # per unit (MMLU questions per subject, bpb documents per
                                 # source, arithmetic problems per level, RM prompts); 0 = all
        "mmlu_shots": 5,
        "bpb_max_bytes": 65_536,  # per source (held-out text beyond this is not read)
        "arith_pass_k_samples": 8,
        "gsm8k_shots": 4,        # the base model's solved examples (as many as fit)
        "gen_max_new_tokens": 128,  # GSM8K replies and AlpacaEval answers
        "winrate_reference": "gpt4_1106_preview",  # AlpacaEval 2.0's baseline outputs
    })
    cfg.update(overrides)
    return cfg


def _names(text: str, known: tuple[str, ...], what: str) -> list[str]:
    names = [n.strip() for n in str(text).split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown {what} {unknown}; known: {list(known)}")
    return names


class Parts:
    """The append-only record of finished units (`parts.jsonl`), read once, flushed per unit."""

    def __init__(self, path: Path):
        self.path = path
        self.done: dict[str, Any] = {}
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:  # a line cut by a kill: that unit runs again
                    continue
                self.done[row["key"]] = row["result"]

    def get_or_run(self, key: str, fn: Callable[[], Any]) -> Any:
        if key in self.done:
            return self.done[key]
        result = fn()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps({"key": key, "result": result}) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.done[key] = result
        return result


def unit_key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def stage_identity(workdir: Path, stage: str) -> str:
    """Changes whenever the stage is trained again (its summary is rewritten)."""
    return hashlib.sha256((workdir / stage / "summary.json").read_bytes()).hexdigest()[:16]


def finished(workdir: Path, stages: list[str]) -> list[str]:
    return [s for s in stages if read_summary(workdir / s) is not None]


def run(c: ml_collections.ConfigDict, workdir: str | Path,
        log: Callable[[str], None] = print) -> dict[str, Any]:
    from gpt_jax.eval import suites

    workdir = Path(workdir)
    stages = finished(workdir, _names(c.stages, STAGES, "stages") or list(STAGES))
    wanted = _names(c.suites, SUITES, "suites")
    if not stages:
        raise FileNotFoundError(f"{workdir}: no finished stage among {list(STAGES)}")
    parts = Parts(workdir / "eval" / "parts.jsonl")
    ctx = suites.Context(workdir, c, parts, log)
    t0 = time.perf_counter()
    table: dict[str, dict[str, Any]] = {s: {} for s in stages}
    seconds: dict[str, float] = {}
    for suite in wanted:
        t = time.perf_counter()
        if suite == "rm":
            table_rm = suites.rm(ctx)
            if table_rm is not None:
                table.setdefault("reward", {})["rm"] = table_rm
        else:
            for stage in stages:
                result = getattr(suites, suite)(ctx, stage)
                if result is not None:
                    table[stage][suite] = result
        seconds[suite] = time.perf_counter() - t
    old = read_summary(workdir / "eval") or {}
    identities = {s: stage_identity(workdir, s) for s in {*table, *old.get("stages", {})}
                  if (workdir / s / "summary.json").exists()}
    limits = {suite: int(c.limit) for suite in wanted}
    _keep_earlier(old, table, identities, limits, wanted)
    summary = {"stage": "eval", "stages": table, "suites": sorted(limits, key=SUITES.index),
               "limits": limits, "identities": identities, "settings": c.to_dict(),
               "chance": CHANCE, "seconds_by_suite": seconds,
               "wall_seconds": time.perf_counter() - t0}
    write_summary(workdir / "eval", summary)
    return summary


def _keep_earlier(old: dict, table: dict, identities: dict, limits: dict,
                  wanted: list[str]) -> None:
    """Adds an earlier command's results for suites this one did not run, where their stage is
    still the one they scored (same identity), so `--suites=mmlu` then `--suites=bpb` give one
    table; results of a retrained stage are dropped."""
    if not old:
        return
    for stage, results in old.get("stages", {}).items():
        if old.get("identities", {}).get(stage) != identities.get(stage):
            continue
        for suite, result in results.items():
            if suite not in wanted and suite in SUITES:
                table.setdefault(stage, {})[suite] = result
                limits.setdefault(suite, old.get("limits", {}).get(suite, 0))
