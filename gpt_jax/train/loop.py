"""The one training loop every stage shares.

It owns everything around the pure `train_step`: automatic resume from the latest checkpoint
(train state + data-iterator state), periodic eval, progress (`gpt_jax.progress`: a bar on a TTY,
one line per log step otherwise: loss, lr, tokens/s, MFU), metrics to
JSONL + TensorBoard, checkpoints, and the non-finite-loss guard.

Supervised stages feed it an iterator of host batches. RL stages feed it a source whose batches
depend on the current policy: when the iterator has `next_for(state)`, the loop asks it for each
batch with the state about to be updated (PPO: a scored rollout of the current policy). Its
`get_state()` (beta, counters, ...) is checkpointed with the train state like an iterator's.

Metrics stay on device between log steps (no per-step host sync); they are fetched at log,
eval and checkpoint steps. Non-finite values: the train step skips any update whose loss,
gradients or new params are not all finite (`step.py`), so params stay finite; a checkpoint is
not written at a skipped step (except the last); after `train.max_nonfinite_steps` skipped steps
in a row the run stops with NonFiniteLossError naming the steps. The state before that streak
failed on several batches, so its checkpoint (the newest, if one was saved after the last good
step) is moved to `<stage_dir>/checkpoints_nonfinite/` and a resume starts from the one before it
(at least two are kept), which is followed by a finite step.
"""
from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import jax
import numpy as np

from gpt_jax.checkpoint import Checkpointer, abstract_with_shardings
from gpt_jax.flops import measure_matmul_peak
from gpt_jax.metrics import MetricsWriter, read_metrics, truncate_jsonl
from gpt_jax.multihost import is_primary
from gpt_jax.progress import progress


QUARANTINE = "checkpoints_nonfinite"  # <stage_dir>/ subdir for checkpoints that failed


class NonFiniteLossError(FloatingPointError):
    pass


@dataclasses.dataclass
class LoopResult:
    state: Any
    last_train: dict[str, float]
    last_eval: dict[str, float]
    steps_run: int
    tokens_per_sec: float
    mfu: float
    compile_seconds: float
    wall_seconds: float


def logged_at(path: Path, step: int) -> tuple[dict, dict]:
    """(train row, eval row) written at `step` in a metrics.jsonl: a row with a "loss" is the
    training log, any other row at that step the evaluation."""
    train: dict = {}
    evaluation: dict = {}
    for row in read_metrics(path) if path.exists() else []:
        if row.get("step") == step:
            body = {k: v for k, v in row.items() if k != "step"}
            (train if "loss" in body else evaluation).update(body)
    return train, evaluation


@dataclasses.dataclass
class Loop:
    """Everything the loop needs; see `run`. `put_batch` moves a host batch onto the mesh."""

    stage_dir: str
    train_cfg: Any  # total_steps, log_every, eval_every, eval_batches, checkpoint_every, ...
    train_step: Callable  # jit'd (state, batch, rng) -> (state, metrics)
    train_iter: Iterator  # next() -> host batch; get_state()/set_state(dict)
    put_batch: Callable[[dict], Any]
    abstract_state: Any
    state_shardings: Any
    eval_step: Callable | None = None  # jit'd (params, batch) -> {"loss_sum", "num_tokens"}
    make_eval_iter: Callable[[], Iterator] | None = None
    eval_hook: Callable[[Any, int], dict] | None = None  # (params, step) -> extra eval metrics
    tokens_per_step: int = 0
    flops_per_step: float = 0.0
    peak_flops: float = 0.0  # 0 = measure a float32 2048^3 matmul when the loop starts
    meta: dict | None = None
    desc: str = "train"
    eval_at_start: bool = False  # a fresh run evaluates (eval_hook) at step 0, before any update
    log_all_rows: bool = False  # every step's metrics row is written, not only each log step's
    extra_jsonl: tuple[str, ...] = ()  # files in stage_dir with "step" rows, truncated on resume
    postfix: Callable[[dict], dict] | None = None  # last metrics row -> progress-bar fields

    def next_batch(self, state):
        it = self.train_iter
        return self.put_batch(it.next_for(state) if hasattr(it, "next_for") else next(it))

    def truncate(self, writer: MetricsWriter, step: int) -> None:
        """Drop rows past `step` (those of an attempt that died before saving its state)."""
        writer.truncate_after(step)
        for name in self.extra_jsonl if writer.enabled else ():
            truncate_jsonl(Path(self.stage_dir) / name, step)

    def run_eval(self, params, step: int) -> dict[str, float]:
        out = self.evaluate(params) if self.eval_step is not None else {}
        if self.eval_hook is not None:
            out.update(self.eval_hook(params, step))
        return out

    def evaluate(self, params) -> dict[str, float]:
        it = self.make_eval_iter()
        loss_sum, count = 0.0, 0.0
        for _ in range(self.train_cfg.eval_batches):
            out = jax.device_get(self.eval_step(params, self.put_batch(next(it))))
            loss_sum += float(out["loss_sum"])
            count += float(out["num_tokens"])
        return {"eval_loss": loss_sum / max(count, 1.0), "eval_tokens": count}

    def run(self, init_state: Callable[[], Any], rng) -> LoopResult:
        cfg = self.train_cfg
        t_start = time.perf_counter()
        if self.flops_per_step and not self.peak_flops:
            self.peak_flops = measure_matmul_peak()
        # at least 2 kept: when the newest turns out bad (see below), an older good one remains
        ckpt = Checkpointer(Path(self.stage_dir) / "checkpoints",
                            max_to_keep=max(int(cfg.max_to_keep), 2))
        max_nonfinite = int(cfg.get("max_nonfinite_steps", 3))
        writer = MetricsWriter(self.stage_dir, tensorboard=cfg.tensorboard)
        start = ckpt.latest_step()
        if start is not None:
            state, data_state, _ = ckpt.restore(
                abstract_with_shardings(self.abstract_state, self.state_shardings), start)
            self.train_iter.set_state(data_state)
            self.truncate(writer, start)
        else:
            start, state = 0, init_state()
            # rows of an attempt killed before its first checkpoint
            self.truncate(writer, -1 if self.eval_at_start else 0)
            if self.eval_at_start:
                writer.write(0, self.run_eval(state.params, 0))

        pending: list[tuple[int, dict]] = []
        last_train: dict[str, float] = {}
        last_eval: dict[str, float] = {}
        window_start, window_steps = None, 0
        compile_seconds, tokens_per_sec, mfu = 0.0, 0.0, 0.0

        streak = {"first": 0, "count": 0}  # the current run of skipped (non-finite) steps
        bad_checkpoints: list[int] = []  # moved aside once the checkpointer is closed

        def flush() -> list[tuple[int, dict]]:
            rows = [(s, {k: float(v) for k, v in jax.device_get(m).items()}) for s, m in pending]
            pending.clear()
            for s, m in rows:
                if m.get("nonfinite", 0.0) or not np.isfinite(m["loss"]):
                    streak["first"] = streak["first"] if streak["count"] else s
                    streak["count"] += 1
                    if streak["count"] >= max_nonfinite:
                        stop_nonfinite(s, m)
                else:
                    streak["count"] = 0
            return rows

        def stop_nonfinite(s: int, m: dict):
            # the state before the streak gave non-finite steps on `count` batches: a checkpoint
            # of it (the newest, saved before the streak) would resume into the same failure
            writer.write(s, m)  # the step that stopped the run is in metrics.jsonl too
            ckpt.wait()
            steps = sorted(ckpt.manager.all_steps())
            bad_checkpoints.extend(k for k in steps if k >= streak["first"] - 1)
            good = [k for k in steps if k < streak["first"] - 1]
            moved = (f"; checkpoint(s) {bad_checkpoints} of that state moved to "
                     f"{QUARANTINE}/" if bad_checkpoints else "")
            raise NonFiniteLossError(
                f"non-finite loss {m['loss']} at step {s} in {self.stage_dir} (grad_norm "
                f"{m.get('grad_norm')}): {streak['count']} consecutive non-finite steps "
                f"{streak['first']}-{s}, their updates skipped (train.max_nonfinite_steps="
                f"{max_nonfinite}); the last good checkpoint is step "
                f"{good[-1] if good else 'none (a resume starts at step 0)'}{moved}")

        bar = progress(range(start, cfg.total_steps), initial=start, total=cfg.total_steps,
                       desc=self.desc, enabled=cfg.progress_bar)
        try:
            for i in bar:
                step = i + 1
                batch = self.next_batch(state)
                t0 = time.perf_counter()
                state, metrics = self.train_step(state, batch, rng)
                pending.append((step, metrics))
                if i == start:  # first call compiles; keep it out of the throughput window
                    jax.block_until_ready(metrics)
                    compile_seconds = time.perf_counter() - t0
                    window_start, window_steps = time.perf_counter(), 0
                else:
                    window_steps += 1
                last_step = step == cfg.total_steps
                log_now = step % cfg.log_every == 0 or last_step
                eval_now = (self.eval_step is not None or self.eval_hook is not None) and (
                    (cfg.eval_every and step % cfg.eval_every == 0) or last_step)
                ckpt_now = (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or last_step
                if not (log_now or eval_now or ckpt_now):
                    continue
                rows = flush()
                if window_steps:
                    elapsed = time.perf_counter() - window_start
                    tokens_per_sec = self.tokens_per_step * window_steps / elapsed
                    if self.peak_flops:
                        mfu = self.flops_per_step * window_steps / elapsed / self.peak_flops
                    window_start, window_steps = time.perf_counter(), 0
                if log_now:
                    # per-source token counts (pipelines that mix sources keep them in their state)
                    sources = getattr(self.train_iter, "tokens_by_source", None)
                    extra = {"tokens_by_source": dict(sources)} if sources else {}
                    speed = {"tokens_per_sec": tokens_per_sec, "mfu": mfu} if self.tokens_per_step else {}
                    for s, m in rows if cfg.log_every == 1 or self.log_all_rows else rows[-1:]:
                        writer.write(s, {**m, **speed, **extra})
                    last_train = rows[-1][1]
                    if self.postfix is not None:
                        bar.set_postfix(**self.postfix(last_train))
                    else:
                        lr = {"lr": f"{last_train['lr']:.3g}"} if "lr" in last_train else {}
                        bar.set_postfix(loss=f"{last_train['loss']:.4f}", **lr,
                                        tok_s=f"{tokens_per_sec:,.0f}", mfu=f"{mfu:.2f}")
                if eval_now:
                    last_eval = self.run_eval(state.params, step)
                    writer.write(step, last_eval)
                    window_start = time.perf_counter()
                if ckpt_now and (streak["count"] == 0 or last_step):
                    # never at a skipped step (its state just failed), but always the final one
                    ckpt.save(step, state, self.train_iter.get_state(), self.meta, wait=last_step)
        finally:
            bar.close()
            writer.close()
            ckpt.close()
            for k in bad_checkpoints if is_primary() else ():  # one process moves them
                dst = Path(self.stage_dir) / QUARANTINE / str(k)
                dst.parent.mkdir(exist_ok=True)
                os.replace(Path(ckpt.directory) / str(k), dst)
        if start == cfg.total_steps and start and writer.enabled:
            # resumed at its last step (killed between the final checkpoint and the stage's
            # summary): nothing trains, so report what that step logged before the stop
            last_train, last_eval = logged_at(Path(self.stage_dir) / "metrics.jsonl", start)
            tokens_per_sec = last_train.get("tokens_per_sec", tokens_per_sec)
            mfu = last_train.get("mfu", mfu)
        return LoopResult(
            state=state, last_train=last_train, last_eval=last_eval,
            steps_run=cfg.total_steps - start, tokens_per_sec=tokens_per_sec, mfu=mfu,
            compile_seconds=compile_seconds, wall_seconds=time.perf_counter() - t_start)
