"""The stage registry (`config.stage` name -> module with `run(config, workdir) -> summary dict`)
and the opening every stage shares (`begin_stage`): when a stage directory may be reused.

A stage directory `<workdir>/<stage>/` is reused only when nothing that could change its result
has changed (details in docs/stages.md):

- its saved `config.json` equals the requested config, except the cosmetic keys in
  `IGNORED_KEYS` (a finished stage is then skipped, an interrupted one resumes);
- the upstream stages it read (tokenizer, `config.parent`, `*_stage` keys such as
  `ppo.reward_stage`; compare reads every model stage) are still the runs it read: each stage
  records a fresh `run_id` in `lineage.json` when it starts anew, plus the run_ids of its
  upstream stages, and a later re-run of an upstream gives it a new run_id.

Otherwise `begin_stage` raises `StageConfigMismatch`, naming the differing keys. The two ways on
are a new `--workdir`, or `--rerun=<stage>` (gpt_jax.main), which moves the old directory aside to
`<stage>.old-<timestamp>` (never deletes it) and runs the stage anew.
"""
from __future__ import annotations

import importlib
import json
import time
import uuid
from pathlib import Path

STAGES = {
    "tokenizer": "gpt_jax.data.tokenizer_stage",
    "pretrain": "gpt_jax.train.pretrain",
    "sft": "gpt_jax.train.sft",
    "lora_sft": "gpt_jax.train.lora_sft",
    "reward": "gpt_jax.train.reward",
    "moderation": "gpt_jax.train.moderation",
    "ppo": "gpt_jax.train.ppo",
    "ppo_seeds": "gpt_jax.train.ppo_seeds",
    "bon": "gpt_jax.train.bon",
    "feedme": "gpt_jax.train.feedme",
    "grpo": "gpt_jax.train.grpo",
    "dpo": "gpt_jax.train.dpo",
    "compare": "gpt_jax.compare",
    "memory": "gpt_jax.memory.stage",
    "recipe": "gpt_jax.recipe",
    "recipe_seeds": "gpt_jax.recipe_seeds",
}

# Config keys that cannot change a stage's result (display, logging sinks, checkpoint cadence and
# retention: resume is bitwise exact whatever the cadence; the non-finite stop limit: a run that
# finished never reached it; which process of a multi-process run this is; train.kill_at_step,
# a retired test hook that configs saved before its removal still carry). Everything else is
# compared.
IGNORED_KEYS = frozenset({
    "train.progress_bar", "train.tensorboard", "train.checkpoint_every", "train.max_to_keep",
    "train.kill_at_step", "train.max_nonfinite_steps",
    # launch details of a multi-process run: each process has its own id, a resume may use
    # another coordinator (docs/multihost.md)
    "distributed.process_id", "distributed.coordinator_address",
})
LINEAGE = "lineage.json"
_MISSING = "<absent>"


class StageConfigMismatch(ValueError):
    """A stage directory exists but was made with another config or from other upstream runs."""


def stage_module(stage: str):
    if stage not in STAGES:
        raise KeyError(f"config.stage={stage!r}; known stages: {sorted(STAGES)}")
    return importlib.import_module(STAGES[stage])


# -- --rerun ---------------------------------------------------------------------------------------
_REQUESTED: set[str] = set()  # --rerun names (ppo_seeds also covers its ppo_seed<n> dirs)
_MOVED: set[str] = set()  # requests already carried out in this process


def set_rerun(names) -> set[str]:
    """Stages to move aside and run anew when they next begin in this process (--rerun). A stage
    is moved at most once, so one that begins twice in a process is not moved again."""
    if isinstance(names, str):
        names = names.split(",")
    names = {n.strip() for n in names if n and n.strip()}
    unknown = {n for n in names if n not in STAGES and not n.startswith("ppo_seed")}
    if unknown:
        raise KeyError(f"--rerun names unknown stages {sorted(unknown)}; known: {sorted(STAGES)}")
    _REQUESTED.clear()
    _REQUESTED.update(names)
    _MOVED.clear()
    return set(_REQUESTED)


def rerun_requested(stage: str) -> bool:
    if stage in _MOVED:
        return False
    return stage in _REQUESTED or (stage.startswith("ppo_seed") and stage != "ppo_seeds"
                                   and "ppo_seeds" in _REQUESTED)


def move_aside(workdir: str | Path, stage: str) -> Path | None:
    """Renames <workdir>/<stage> to <stage>.old-<timestamp> (a symlink moves as a link); the new
    path, or None when there was nothing to move."""
    src = Path(workdir) / stage
    if not (src.exists() or src.is_symlink()):
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dst, n = src.with_name(f"{stage}.old-{stamp}"), 1
    while dst.exists() or dst.is_symlink():
        dst, n = src.with_name(f"{stage}.old-{stamp}-{n}"), n + 1
    src.rename(dst)
    print(f"[rerun] moved {src} aside to {dst.name}", flush=True)
    return dst


def consume_rerun(workdir, stage: str, move: bool = True) -> None:
    """If a rerun of `stage` is pending: mark it done and (with `move`) move its dir aside."""
    if rerun_requested(stage):
        _MOVED.add(stage)
        if move:
            move_aside(workdir, stage)


def mark_rerun(stage: str) -> None:
    """Records that `stage` is rerun and already moved aside (the recipe moves stale stages)."""
    _REQUESTED.add(stage)
    _MOVED.add(stage)


# -- what is compared ------------------------------------------------------------------------------
def config_dict(config) -> dict:
    """The config as saved in config.json (JSON round trip, so tuples compare as lists)."""
    return json.loads(config.to_json_best_effort()) if hasattr(config, "to_json_best_effort") \
        else json.loads(json.dumps(config))


def _flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_diff(old: dict, new: dict, ignore=IGNORED_KEYS) -> list[tuple[str, object, object]]:
    """[(dotted key, old value, new value)] where the two configs differ, ignored keys left out."""
    a, b = _flatten(old), _flatten(new)
    return [(k, a.get(k, _MISSING), b.get(k, _MISSING)) for k in sorted(set(a) | set(b))
            if k not in ignore and a.get(k, _MISSING) != b.get(k, _MISSING)]


def finished_with(stage_dir: Path, config) -> bool:
    """Whether `stage_dir` finished (its summary.json) with exactly `config` (its saved
    config.json, up to the keys that never change a result): its results can stand for a run of
    `config` elsewhere (a symlink instead of training it again)."""
    from gpt_jax.metrics import read_summary

    saved = Path(stage_dir) / "config.json"
    return (read_summary(stage_dir) is not None and saved.exists()
            and not config_diff(json.loads(saved.read_text()), config_dict(config)))


def upstream_stages(config, stage: str) -> list[str]:
    """The stage directories `stage` reads: the tokenizer, `config.parent`, every string value of
    a key named `*_stage` (ppo.reward_stage, feedme.ppo_stage, ...); compare reads every model."""
    if stage == "tokenizer":
        return []
    names = {"tokenizer"}
    for key, value in _flatten(config_dict(config)).items():
        leaf = key.rsplit(".", 1)[-1]
        if isinstance(value, str) and value and (leaf == "parent" or leaf.endswith("_stage")):
            names.add(value)
    if stage == "compare":
        from gpt_jax.compare import MODEL_STAGES

        names.update(MODEL_STAGES.values())
        names.add("reward")
    names.discard(stage)
    return sorted(names)


def run_id(workdir, stage: str) -> str | None:
    path = Path(workdir) / stage / LINEAGE
    return json.loads(path.read_text()).get("run_id") if path.exists() else None


def _mismatch(workdir, stage: str, stage_dir: Path, requested: dict) -> str | None:
    """Why <stage_dir> may not be reused for `requested`, or None."""
    saved_path = stage_dir / "config.json"
    if not saved_path.exists():
        return None
    lines = [f"  {k}: {old!r} -> {new!r}"
             for k, old, new in config_diff(json.loads(saved_path.read_text()), requested)]
    lineage_path = stage_dir / LINEAGE
    if lineage_path.exists():
        for up, then in json.loads(lineage_path.read_text()).get("upstream", {}).items():
            now = run_id(workdir, up)
            if then is not None and now != then:
                state = "is gone (moved aside?)" if now is None else "was run anew"
                lines.append(f"  upstream stage {up!r} {state} since {stage!r} ran from it")
    if not lines:
        return None
    return "\n".join(lines)


def check_parent_model(config, workdir: str | Path, parent: str) -> None:
    """A child stage must use its parent's exact model config (its params are the parent's)."""
    from gpt_jax.model import GPTConfig

    saved = json.loads((Path(workdir) / parent / "config.json").read_text())["model"]
    if GPTConfig.from_config(saved) != GPTConfig.from_config(config.model):
        raise ValueError(f"config.model differs from {parent}'s model in {workdir}: "
                         f"{saved} vs {config.model.to_dict()}")


def begin_stage(config, workdir: str | Path, stage: str, parent: str | None = None):
    """(stage_dir, summary): the summary when the stage already completed with this config (skip
    it), else None: an interrupted stage resumes (same config), a new one has its parent's model
    checked and its config.json + lineage.json saved. A stage directory made with another config
    or from other upstream runs raises StageConfigMismatch (unless --rerun moved it aside)."""
    from gpt_jax.multihost import is_primary, primary_first

    # several processes (multi-host): process 0 decides and writes config.json + lineage.json,
    # then the others find them (a resume, to them) and write nothing; only it moves dirs aside
    return primary_first(lambda: _begin_stage(config, workdir, stage, parent, is_primary()),
                         f"begin_stage:{stage}")


def _begin_stage(config, workdir, stage: str, parent: str | None, primary: bool):
    from gpt_jax.metrics import read_summary, save_stage_config

    consume_rerun(workdir, stage, move=primary)
    stage_dir = Path(workdir) / stage
    requested = config_dict(config)
    why = _mismatch(workdir, stage, stage_dir, requested)
    done = read_summary(stage_dir)
    if why is not None:
        status = "finished" if done is not None else "interrupted (it would resume)"
        raise StageConfigMismatch(
            f"stage {stage!r} in {workdir} is {status}, but not from what is asked now:\n{why}\n"
            f"Either use a new --workdir, or pass --rerun={stage} to move {stage_dir} aside "
            f"(to {stage}.old-<timestamp>) and run it anew.")
    if done is not None or (stage_dir / "config.json").exists():
        return stage_dir, done  # reuse (finished) or resume (interrupted)
    if parent is not None:
        check_parent_model(config, workdir, parent)
    save_stage_config(stage_dir, config)
    lineage = {"run_id": uuid.uuid4().hex, "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
               "upstream": {up: run_id(workdir, up) for up in upstream_stages(config, stage)}}
    (stage_dir / LINEAGE).write_text(json.dumps(lineage, indent=2) + "\n")
    return stage_dir, done
