"""Test harness: run `gpt_jax.main` and SIGKILL the process at a known point, for the resume tests
(the loop itself has no kill code).

    python tests/kill_after_checkpoint.py STEP [gpt_jax.main flags...]
        right after the checkpoint of STEP (a multiple of train.checkpoint_every) is on disk;
    python tests/kill_after_checkpoint.py after-row:STEP [flags...]
        right after the metrics row of STEP is written: between checkpoints, so rows past the
        last checkpoint are on disk and must be dropped on resume;
    python tests/kill_after_checkpoint.py during-save:STEP [flags...]
        while the asynchronous save of STEP's checkpoint is in flight (started, not awaited).

Each metrics row is appended and closed when written, so the rows up to the kill are on disk.
"""
import os
import runpy
import signal
import sys
import time
from pathlib import Path


def _kill_self() -> None:
    """SIGKILL this process. In a multi-process run the processes first meet at a barrier and the
    coordination leader (process 0) dies last: were it first, the others' in-flight RPCs to it would
    fail and they would abort (SIGABRT) instead of being killed, with their side of the save done."""
    import jax

    if jax.process_count() > 1:
        from orbax.checkpoint import multihost

        multihost.sync_global_processes("kill_after_checkpoint")
        if jax.process_index() == 0:
            time.sleep(3.0)
    os.kill(os.getpid(), signal.SIGKILL)


def install(kill_step: int) -> None:
    """Makes `Checkpointer.save` of step `kill_step` wait for the write, then SIGKILL the process."""
    from gpt_jax.checkpoint import Checkpointer

    save = Checkpointer.save

    def save_then_kill(self, step, *args, **kwargs):
        if step != kill_step:
            return save(self, step, *args, **kwargs)
        save(self, step, *args, **{**kwargs, "wait": True})
        _kill_self()

    Checkpointer.save = save_then_kill


def install_after_row(kill_step: int) -> None:
    """Makes the metrics row of `kill_step` the last thing the process does."""
    from gpt_jax.metrics import MetricsWriter

    write = MetricsWriter.write

    def write_then_kill(self, step, values):
        write(self, step, values)
        if step == kill_step and "loss" in values:
            os.kill(os.getpid(), signal.SIGKILL)

    MetricsWriter.write = write_then_kill


def install_during_save(kill_step: int) -> None:
    """Makes `Checkpointer.save` of `kill_step` start its asynchronous write, then SIGKILL."""
    from gpt_jax.checkpoint import Checkpointer

    save = Checkpointer.save

    def start_then_kill(self, step, *args, **kwargs):
        save(self, step, *args, **{**kwargs, "wait": False})
        if step == kill_step:
            os.kill(os.getpid(), signal.SIGKILL)

    Checkpointer.save = start_then_kill


def install_spec(spec: str) -> None:
    kind, _, step = spec.rpartition(":")
    {"": install, "after-row": install_after_row,
     "during-save": install_during_save}[kind](int(step))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    install_spec(sys.argv[1])
    sys.argv = ["gpt_jax.main", *sys.argv[2:]]
    runpy.run_module("gpt_jax.main", run_name="__main__", alter_sys=True)
