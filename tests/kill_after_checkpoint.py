"""Test harness: run `gpt_jax.main` and SIGKILL the process right after the checkpoint of one step
is on disk: a hard crash at a known point, for the resume tests (the loop itself has no kill code).

    python tests/kill_after_checkpoint.py STEP [gpt_jax.main flags...]

The step must be a checkpoint step (a multiple of train.checkpoint_every). Its checkpoint is
written synchronously before the kill; the metrics rows up to that step are already in
metrics.jsonl (each row is appended and closed when written).
"""
import os
import runpy
import signal
import sys
from pathlib import Path


def install(kill_step: int) -> None:
    """Makes `Checkpointer.save` of step `kill_step` wait for the write, then SIGKILL the process."""
    from gpt_jax.checkpoint import Checkpointer

    save = Checkpointer.save

    def save_then_kill(self, step, *args, **kwargs):
        if step != kill_step:
            return save(self, step, *args, **kwargs)
        save(self, step, *args, **{**kwargs, "wait": True})
        os.kill(os.getpid(), signal.SIGKILL)

    Checkpointer.save = save_then_kill


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    install(int(sys.argv[1]))
    sys.argv = ["gpt_jax.main", *sys.argv[2:]]
    runpy.run_module("gpt_jax.main", run_name="__main__", alter_sys=True)
