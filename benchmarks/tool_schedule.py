"""Tool-call schedules in the decode engine: "any" (service a call as soon as any row pauses) vs
"all" (run the other rows on until every live row is paused or done) vs wait=W (run on until all
are paused/done or a paused row has waited W steps), same run, same workload.

Workload: a random-init gpt2-family model (d_model 256, 4 layers, vocab 512 of a BPE trained on a
small text), BATCH rows, NEW tokens each, greedy. A logit processor forces each row to issue
CALLS calculator calls ("a*b") at seeded random output positions (only the first CALLERS rows call,
default all) and otherwise lets the model pick
(tool markers banned), so every schedule produces exactly the same tokens (checked). Also timed:
the same generation with no tool (the calls' tokens are still forced, nothing is inserted), the
engine's plain one-loop path, as the reference. Per setting: median seconds over --runs timed runs
after a warm-up (compiles), the runs interleaved; tokens/s counts every output token (inserted
tool tokens included); loops = device-loop calls (host round trips) per generation.

    .venv/bin/python benchmarks/tool_schedule.py [--runs 3] [--batch 16] [--new 128] [--calls 2]
        [--callers 16]
"""
from __future__ import annotations

import argparse
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gpt_jax import engine_tools, sampling
from gpt_jax.flops import cpu_name
from gpt_jax.model import GPT, GPTConfig
from gpt_jax.sampling import SamplingConfig
from gpt_jax.tokenizer import train_bpe
from gpt_jax.tools.calculator import calculate

TEXT = ("The quick brown fox jumps over the lazy dog. Numbers 12 34 56 78 and 23 + 45 = 68.\n"
        "What is 12*3? It is 36. 7*6 = 42, 2+3 = 5. Hello world, how are you today?\n")


def force(logits, state):
    """table[row, k] >= 0 forces that token at the row's k-th output; else the model picks."""
    table, banned = state.extra
    b, v = logits.shape
    step = jnp.broadcast_to(state.step, (b,))
    want = jnp.take_along_axis(table, jnp.clip(step, 0, table.shape[1] - 1)[:, None], 1)[:, 0]
    free = jnp.where(banned[None], -1e9, logits)
    return jnp.where((want >= 0)[:, None],
                     jnp.where(jnp.arange(v)[None] == want[:, None], 0.0, -1e9), free)


def workload(tok, batch: int, new: int, calls: int, callers: int, seed: int = 0):
    """Forcing tables: with the tool (results inserted after each call) and without (the same
    calls, nothing inserted), plus the prompts."""
    rng = np.random.default_rng(seed)
    t = engine_tools.ToolIds.of(tok)
    with_tool = np.full((batch, new), -1, np.int32)
    plain = np.full((batch, new), -1, np.int32)
    for r in range(min(callers, batch)):
        k = 1 + int(rng.integers(0, 8))
        k_plain = k
        for _ in range(calls):
            a, b = (int(x) for x in rng.integers(2, 999, 2))
            call = [t.call_start, *tok.encode(f"{a}*{b}"), t.call_end]
            res = [t.result_start, *tok.encode(calculate(f"{a}*{b}")), t.result_end]
            if k + len(call) + len(res) >= new:
                break
            with_tool[r, k: k + len(call)] = call
            plain[r, k_plain: k_plain + len(call)] = call
            gap = int(rng.integers(4, max(5, new // (calls + 1))))
            k, k_plain = k + len(call) + len(res) + gap, k_plain + len(call) + gap
    prompts = [tok.encode(f"Question {r}: what is the product?") for r in range(batch)]
    return prompts, with_tool, plain


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--new", type=int, default=128)
    parser.add_argument("--calls", type=int, default=2, help="calls per calling row (at most)")
    parser.add_argument("--waits", type=int, nargs="*", default=[8, 32],
                        help="int schedules to time besides 'any' and 'all'")
    parser.add_argument("--callers", type=int, default=1 << 30, help="rows that call (default all)")
    args = parser.parse_args()
    tok = train_bpe([TEXT * 5], vocab_size=512, min_frequency=1)
    config = GPTConfig(family="gpt2", vocab_size=512, max_seq_len=256, n_layers=4, d_model=256,
                       n_heads=8, init_std=0.1)
    shapes = jax.eval_shape(GPT(config).init, jax.random.key(0), jnp.zeros((1, 1), jnp.int32))
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: rng.normal(0, 0.1, s.shape).astype(np.float32),
                          nn.unbox(shapes["params"]))
    params = jax.device_put(params)
    prompts, with_tool, plain = workload(tok, args.batch, args.new, args.calls, args.callers)
    banned = np.zeros(config.vocab_size, bool)
    banned[list(engine_tools.ToolIds.of(tok))] = True
    s = SamplingConfig(temperature=0, max_new_tokens=args.new)
    schedules = ["any", "all", *args.waits]
    loops = {str(name): 0 for name in schedules}
    run_jit = engine_tools._run_jit
    current = [None]

    def counting(*a, **kw):
        if current[0] is not None:
            loops[current[0]] += 1
        return run_jit(*a, **kw)

    engine_tools._run_jit = counting

    def tool_fn(schedule):
        def fn():
            current[0] = str(schedule)
            return sampling.generate(params, config, prompts, s, logit_processor=force,
                                     processor_state=(jnp.asarray(with_tool), jnp.asarray(banned)),
                                     tokenizer=tok, tool=calculate, tool_schedule=schedule)
        return fn

    def no_tool():
        current[0] = None
        return sampling.generate(params, config, prompts, s, logit_processor=force,
                                 processor_state=(jnp.asarray(plain), jnp.asarray(banned)))

    fns = {str(name): tool_fn(name) for name in schedules}
    fns["no tool"] = no_tool
    outs = {name: fn() for name, fn in fns.items()}  # warm-up: compiles every shape
    for name in loops:
        loops[name] = 0
    times = {name: [] for name in fns}
    for _ in range(args.runs):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            outs[name] = jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - t0)
    for name in loops:
        assert np.array_equal(outs["any"].tokens, outs[name].tokens), f"schedule {name} differs"
    n_calls = int((outs["any"].tokens == engine_tools.ToolIds.of(tok).call_end).sum())
    print(f"cpu: {cpu_name()}  jax {jax.__version__}  batch={args.batch} new={args.new} "
          f"calls/row<={args.calls} callers={min(args.callers, args.batch)} (total {n_calls}), "
          f"greedy, median of {args.runs}")
    for name in fns:
        sec = statistics.median(times[name])
        gen = outs[name]
        tokens = int(gen.lengths.sum())
        extra = f"  loops/gen={loops[name] / args.runs:.1f}" if name in loops else ""
        label = name if name in ("any", "all", "no tool") else f"wait={name}"
        print(f"{label:8s} {sec:7.3f} s  {tokens / sec:8.1f} tokens/s  ({tokens} tokens){extra}")
    ratio = statistics.median(times["all"]) / statistics.median(times["any"])
    print(f"time_all/time_any={ratio:.2f}")


if __name__ == "__main__":
    main()
