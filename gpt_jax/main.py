"""Entry point: `python -m gpt_jax.main --config=experiments/configs/<file>.py --workdir=runs/x`.

Dispatches on `config.stage` (tokenizer | pretrain | ... | recipe). Any config key can be
overridden as `--config.train.total_steps=100`; an unknown key is an error naming the key.
A stage directory made with another config is an error (`stages.StageConfigMismatch`) unless
`--rerun=<stage>[,<stage>...]` moves it aside first (docs/stages.md).

`--compile_only` lowers and compiles the stage's train_step for the config on its mesh with
abstract inputs (nothing allocated) and prints per-device memory. `--simulate_devices=N` makes
the CPU backend expose N devices (it must act before jax is imported, hence the early argv scan).
"""
from __future__ import annotations

import os
import sys


def _simulate_devices_from_argv(argv: list[str]) -> None:
    for arg in argv:
        if arg.startswith("--simulate_devices="):
            n = int(arg.split("=", 1)[1])
            if n > 0:
                flags = os.environ.get("XLA_FLAGS", "")
                os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()
                os.environ.setdefault("JAX_PLATFORMS", "cpu")


if __name__ == "__main__":
    _simulate_devices_from_argv(sys.argv)

import json  # noqa: E402

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from gpt_jax.stages import StageConfigMismatch, set_rerun, stage_module  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (stages write <workdir>/<stage>/).")
_COMPILE_ONLY = flags.DEFINE_bool("compile_only", False,
                                  "Only lower+compile the train step and print memory per device.")
_RERUN = flags.DEFINE_list(
    "rerun", [], "Stages to run anew (comma-separated): each one's old <workdir>/<stage> is moved "
    "aside to <stage>.old-<timestamp>, never deleted. In a recipe, the later stages that read a "
    "rerun stage are rerun too. Without it, a stage dir made with another config is an error.")
flags.DEFINE_integer("simulate_devices", 0, "Expose N CPU devices (for meshes on one host).")

def main(argv) -> None:
    del argv
    if not any(a.startswith(("--verbosity", "-v")) for a in sys.argv):
        logging.set_verbosity(logging.WARNING)  # orbax/TFDS info logs drown the progress bars
    config = _CONFIG.value
    if _COMPILE_ONLY.value:
        from gpt_jax.aot import compile_plan

        print(json.dumps(compile_plan(config), indent=2))
        return
    if not _WORKDIR.value:
        raise app.UsageError("--workdir is required")
    if "distributed" in config and config.distributed.initialize:
        from gpt_jax.train.pretrain import initialize_distributed

        initialize_distributed(config)
    set_rerun(_RERUN.value)
    try:
        summary = stage_module(config.stage).run(config, _WORKDIR.value)
    except StageConfigMismatch as e:
        sys.exit(f"StageConfigMismatch: {e}")
    logging.info("summary: %s", summary)
    print(json.dumps(summary, indent=2, default=str))


def cli() -> None:
    flags.mark_flag_as_required("config")
    app.run(main)


if __name__ == "__main__":
    cli()
