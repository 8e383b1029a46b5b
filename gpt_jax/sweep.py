"""Hyperparameter sweeps: one stage config, a list of override points, one isolated run per point.

    python -m gpt_jax.sweep --config=experiments/configs/ppo_tiny.py \\
        --sweep=experiments/sweeps/ppo_beta.py --workdir=runs/sweep_beta --parent=runs/tiny

A sweep file defines `get_sweep() -> list[dict]` of override points `{"config.a.b": value, ...}`
(`grid(...)` below builds the product of axes). Each point runs, in sequence, as its own process
`python -m gpt_jax.main --config=<config> --config.a.b=<value> ... --workdir=<workdir>/<name>`, so
runs share no jit cache, memory or global state, and a crash stops only that point. The run name
is built from the overrides that vary across the sweep (e.g. `kl_coef=0.05`). A point whose
stage summary.json exists is skipped, so re-running a sweep finishes the missing points.
`--dry_run` prints one shell line per point instead (for a cluster's job array).

`--parent=<workdir>`: a stage that needs earlier stages (PPO needs tokenizer/sft/reward) gets
them as symlinks: every subdir of the parent that has a summary.json and comes before the swept
stage in the pipeline (`report.STAGE_ORDER`), and the parent's data_cache, is linked into each
run dir (never the swept stage or a later one such as compare, which would describe the parent).

Results: `<workdir>/results.csv` and `results.md`, one row per point: run name, status, the
overrides, then the scalar leaves of the stage's summary.json flattened to dotted keys (all of
them, or those named by `--metrics=a,b.c`).
"""
from __future__ import annotations

import argparse
import csv
import importlib.util
import itertools
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SHARED_DIRS = ("data_cache",)  # linked from --parent besides the finished stages
LOG_NAME = "sweep_run.log"


# -- sweep definitions ---------------------------------------------------------------------------
def config_key(key: str) -> str:
    """"optim__learning_rate" / "optim.learning_rate" / "config.optim.learning_rate" ->
    "config.optim.learning_rate"."""
    key = key.replace("__", ".")
    return key if key.startswith("config.") else f"config.{key}"


def grid(axes: dict[str, list] | None = None, **more_axes) -> list[dict[str, Any]]:
    """Every combination of the axes' values, the last axis varying fastest.

    grid({"config.optim.learning_rate": [1e-3, 3e-3]}, train__total_steps=[2]) ==
        [{"config.optim.learning_rate": 1e-3, "config.train.total_steps": 2},
         {"config.optim.learning_rate": 3e-3, "config.train.total_steps": 2}]
    """
    merged = {config_key(k): list(v) for k, v in {**(axes or {}), **more_axes}.items()}
    keys = list(merged)
    return [dict(zip(keys, values)) for values in itertools.product(*merged.values())]


def _load_module(path: str | Path, name: str):
    spec = importlib.util.spec_from_file_location(name, Path(path))
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_sweep(path: str | Path) -> list[dict[str, Any]]:
    points = _load_module(path, "sweep_definition").get_sweep()
    return [{config_key(k): v for k, v in p.items()} for p in points]


def load_config(path: str | Path, overrides: dict[str, Any] | None = None):
    """The config file's get_config() with `overrides` applied (an unknown key is a KeyError)."""
    config = _load_module(path, "sweep_base_config").get_config()
    for key, value in (overrides or {}).items():
        *parents, leaf = key.split(".")[1:]
        target = config
        for p in parents:
            if p not in target:
                raise KeyError(f"{key}: no {p!r} in the config")
            target = target[p]
        if leaf not in target:
            raise KeyError(f"{key}: no {leaf!r} in the config")
        target[leaf] = value
    return config


def target_stage(config) -> str:
    """The stage dir whose summary.json marks the run done (a recipe: its last stage's)."""
    if config.stage == "recipe":
        return [s.strip() for s in config.stages.split(",") if s.strip()][-1]
    return config.stage


# -- naming and commands -------------------------------------------------------------------------
def _short_keys(keys: list[str], all_keys: list[str]) -> dict[str, str]:
    """Each dotted key -> its shortest dotted suffix that no other key of the sweep ends with."""
    out = {}
    for key in keys:
        parts = key.split(".")[1:]
        for n in range(1, len(parts) + 1):
            short = ".".join(parts[-n:])
            if not any(o != key and o.endswith("." + short) for o in all_keys):
                break
        out[key] = short
    return out


def format_value(value) -> str:
    """A value as the --config.a.b= flag (and the run name) spells it."""
    return repr(value) if isinstance(value, float) else str(value)


def run_names(points: list[dict]) -> list[str]:
    """Names from the overrides whose values differ across the points ("run" for one point)."""
    keys = list(dict.fromkeys(k for p in points for k in p))
    varying = [k for k in keys if len({format_value(p.get(k)) for p in points}) > 1]
    short = _short_keys(varying, keys)
    names = []
    for p in points:
        parts = [f"{short[k]}={format_value(p[k])}" for k in varying if k in p]
        name = re.sub(r"[^A-Za-z0-9._=+-]", "-", "__".join(parts)) or "run"
        names.append(name)
    if len(set(names)) != len(names):  # e.g. repeated points: disambiguate by position
        names = [f"{i:03d}_{n}" for i, n in enumerate(names)]
    return names


@dataclass
class SweepRun:
    name: str
    overrides: dict[str, Any]
    workdir: Path

    def command(self, config_path: str, python: str = "python") -> list[str]:
        return [python, "-m", "gpt_jax.main", f"--config={config_path}",
                *[f"--{k}={format_value(v)}" for k, v in self.overrides.items()],
                f"--workdir={self.workdir}"]


def plan(points: list[dict], workdir: str | Path) -> list[SweepRun]:
    return [SweepRun(name, p, Path(workdir) / name) for name, p in zip(run_names(points), points)]


def upstream(stage_name: str, swept: str) -> bool:
    """Whether a parent's stage may feed the swept one: it comes earlier in the pipeline order
    (unknown names: anything but the swept stage itself)."""
    from gpt_jax.report import STAGE_ORDER

    if stage_name == swept:
        return False
    if stage_name in STAGE_ORDER and swept in STAGE_ORDER:
        return STAGE_ORDER.index(stage_name) < STAGE_ORDER.index(swept)
    return True


def parent_links(parent: str | Path | None, swept: str) -> list[Path]:
    """The parent's dirs to link into each run: its finished stages upstream of the swept one
    (a later stage, e.g. compare, would describe the parent's run, not this one) + caches; never
    a stage moved aside by a rerun (`<stage>.old-<time>`)."""
    if parent is None:
        return []
    parent = Path(parent).resolve()
    if not parent.is_dir():
        raise FileNotFoundError(f"--parent={parent} does not exist")
    return sorted(d for d in parent.iterdir() if d.is_dir() and ".old-" not in d.name and (
        d.name in SHARED_DIRS or ((d / "summary.json").exists() and upstream(d.name, swept))))


def shell_line(run: SweepRun, config_path: str, links: list[Path]) -> str:
    """One self-contained shell line for the point (what --dry_run prints)."""
    steps = []
    if links:
        steps.append(shlex.join(["mkdir", "-p", str(run.workdir)]))
        steps += [shlex.join(["ln", "-sfn", str(src), str(run.workdir / src.name)])
                  for src in links]
    steps.append(shlex.join(run.command(config_path)))
    return " && ".join(steps)


# -- running and collecting ----------------------------------------------------------------------
def link_parent(run: SweepRun, links: list[Path]) -> None:
    run.workdir.mkdir(parents=True, exist_ok=True)
    for src in links:
        dst = run.workdir / src.name
        if not dst.exists() and not dst.is_symlink():
            dst.symlink_to(src, target_is_directory=True)


def execute(run: SweepRun, config_path: str, links: list[Path]) -> int:
    """Runs one point in its own process; output goes to <run>/sweep_run.log. Returns the rc."""
    link_parent(run, links)
    run.workdir.mkdir(parents=True, exist_ok=True)
    with open(run.workdir / LOG_NAME, "w") as log:
        proc = subprocess.run(run.command(config_path, python=sys.executable), stdout=log,
                              stderr=subprocess.STDOUT)
    return proc.returncode


def flatten(tree, prefix: str = "") -> dict[str, Any]:
    """Scalar leaves (numbers, strings, bools, None) of nested dicts as {"a.b": value}."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        elif value is None or isinstance(value, (int, float, str, bool)):
            out[name] = value
    return out


def read_stage_summary(run: SweepRun, stage: str) -> dict | None:
    from gpt_jax.metrics import read_summary

    return read_summary(run.workdir / stage)


def collect(runs: list[SweepRun], stage: str, statuses: dict[str, str],
            metrics: list[str] | None = None) -> tuple[list[str], list[dict]]:
    """(columns, rows): run, status, the overrides (without "config."), then the metrics."""
    override_cols = list(dict.fromkeys(k[len("config."):] for r in runs for k in r.overrides))
    flat = {r.name: flatten(read_stage_summary(r, stage) or {}) for r in runs}
    metric_cols = metrics or list(dict.fromkeys(k for f in flat.values() for k in f))
    rows = []
    for r in runs:
        row = {"run": r.name, "status": statuses.get(r.name, "")}
        row.update({k[len("config."):]: v for k, v in r.overrides.items()})
        row.update({m: flat[r.name].get(m) for m in metric_cols})
        rows.append(row)
    return ["run", "status", *override_cols, *metric_cols], rows


def _md_cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value).replace("|", "\\|")


def write_results(workdir: str | Path, columns: list[str], rows: list[dict]) -> tuple[Path, Path]:
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = workdir / "results.csv", workdir / "results.md"
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({c: "" if row.get(c) is None else row.get(c) for c in columns})
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(_md_cell(row.get(c)) for c in columns) + " |" for row in rows]
    md_path.write_text("\n".join(lines) + "\n")
    return csv_path, md_path


def sweep(config_path: str, sweep_path: str, workdir: str, parent: str | None = None,
          metrics: list[str] | None = None, dry_run: bool = False, echo=print) -> list[dict]:
    """Runs (or with dry_run, prints) every point, then writes the results; returns the rows."""
    points = load_sweep(sweep_path)
    if not points:
        raise ValueError(f"{sweep_path}: get_sweep() returned no points")
    stages = {target_stage(load_config(config_path, p)) for p in points}  # validates every key
    if len(stages) != 1:
        raise ValueError(f"the points run different stages {sorted(stages)}")
    stage = stages.pop()
    runs = plan(points, workdir)
    links = parent_links(parent, stage)
    if dry_run:
        for run in runs:
            echo(shell_line(run, config_path, links))
        return []
    statuses = {}
    for i, run in enumerate(runs, 1):
        if read_stage_summary(run, stage) is not None:
            statuses[run.name] = "done"
            echo(f"[{i}/{len(runs)}] {run.name}: already done, skipped")
            continue
        echo(f"[{i}/{len(runs)}] {run.name}: running ({run.workdir / LOG_NAME})")
        rc = execute(run, config_path, links)
        ok = rc == 0 and read_stage_summary(run, stage) is not None
        statuses[run.name] = "done" if ok else f"failed (exit {rc})"
        echo(f"[{i}/{len(runs)}] {run.name}: {statuses[run.name]}")
    columns, rows = collect(runs, stage, statuses, metrics)
    csv_path, md_path = write_results(workdir, columns, rows)
    echo(f"results: {csv_path} {md_path}")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="the stage's config file")
    parser.add_argument("--sweep", required=True, help="a file defining get_sweep()")
    parser.add_argument("--workdir", required=True, help="runs go to <workdir>/<run name>")
    parser.add_argument("--parent", default=None,
                        help="workdir whose finished stages each run links to (e.g. runs/tiny)")
    parser.add_argument("--metrics", default="",
                        help="comma-separated dotted summary keys for the results (default all)")
    parser.add_argument("--dry_run", action="store_true", help="print the commands, run nothing")
    args = parser.parse_args(argv)
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()] or None
    rows = sweep(args.config, args.sweep, args.workdir, args.parent, metrics, args.dry_run)
    return 1 if any(r["status"] != "done" for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
