"""The one training loop every stage shares.

It owns everything around the pure `train_step`: automatic resume from the latest checkpoint
(train state + data-iterator state), periodic eval, a tqdm bar (loss, tokens/s, MFU), metrics to
JSONL + TensorBoard, checkpoints, and the non-finite-loss guard.

Metrics stay on device between log steps (no per-step host sync); they are fetched at log,
eval and checkpoint steps, and every fetched loss is checked: a non-finite one stops the run
with its step number, before any checkpoint of that state can be written, so the last good
checkpoint stays the newest.
"""
from __future__ import annotations

import dataclasses
import os
import signal
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import jax
import numpy as np
from tqdm.auto import tqdm

from gpt_jax.checkpoint import Checkpointer, abstract_with_shardings
from gpt_jax.flops import measure_matmul_peak
from gpt_jax.metrics import MetricsWriter


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
        ckpt = Checkpointer(Path(self.stage_dir) / "checkpoints", max_to_keep=cfg.max_to_keep)
        writer = MetricsWriter(self.stage_dir, tensorboard=cfg.tensorboard)
        start = ckpt.latest_step()
        if start is not None:
            state, data_state, _ = ckpt.restore(
                abstract_with_shardings(self.abstract_state, self.state_shardings), start)
            self.train_iter.set_state(data_state)
            writer.truncate_after(start)
        else:
            start, state = 0, init_state()
            writer.truncate_after(0)  # rows of an attempt killed before its first checkpoint

        pending: list[tuple[int, dict]] = []
        last_train: dict[str, float] = {}
        last_eval: dict[str, float] = {}
        window_start, window_steps = None, 0
        compile_seconds, tokens_per_sec, mfu = 0.0, 0.0, 0.0

        def flush() -> list[tuple[int, dict]]:
            rows = [(s, {k: float(v) for k, v in jax.device_get(m).items()}) for s, m in pending]
            pending.clear()
            for s, m in rows:
                if not np.isfinite(m["loss"]):
                    raise NonFiniteLossError(
                        f"non-finite loss {m['loss']} at step {s} in {self.stage_dir}; "
                        f"the last good checkpoint is step {ckpt.latest_step()}")
            return rows

        bar = tqdm(range(start, cfg.total_steps), initial=start, total=cfg.total_steps,
                   desc=self.desc, dynamic_ncols=True, disable=not cfg.progress_bar)
        try:
            for i in bar:
                step = i + 1
                batch = self.put_batch(next(self.train_iter))
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
                eval_now = self.eval_step is not None and (
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
                    for s, m in rows if cfg.log_every == 1 else rows[-1:]:
                        writer.write(s, {**m, "tokens_per_sec": tokens_per_sec, "mfu": mfu, **extra})
                    last_train = rows[-1][1]
                    bar.set_postfix(loss=f"{last_train['loss']:.4f}",
                                    tok_s=f"{tokens_per_sec:,.0f}", mfu=f"{mfu:.2f}")
                if eval_now:
                    last_eval = self.evaluate(state.params)
                    if self.eval_hook is not None:
                        last_eval.update(self.eval_hook(state.params, step))
                    writer.write(step, last_eval)
                    window_start = time.perf_counter()
                if ckpt_now:
                    ckpt.save(step, state, self.train_iter.get_state(), self.meta,
                              wait=last_step or step == cfg.kill_at_step)
                if cfg.kill_at_step and step == cfg.kill_at_step:
                    writer.close()
                    os.kill(os.getpid(), signal.SIGKILL)  # testing hook: a hard crash
        finally:
            bar.close()
            writer.close()
            ckpt.close()
        return LoopResult(
            state=state, last_train=last_train, last_eval=last_eval,
            steps_run=cfg.total_steps - start, tokens_per_sec=tokens_per_sec, mfu=mfu,
            compile_seconds=compile_seconds, wall_seconds=time.perf_counter() - t_start)
