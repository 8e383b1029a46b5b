"""Serving LoRA adapters per request on one copy of the base weights (`gpt_jax.lora_batch`): what
the per-row low-rank path costs, against peers measured in the same run.

The serving engine (`gpt_jax.serve.engine.Engine`) on the tiny recipe's model shape (random
weights; 4 layers, d 128, vocab 2,048), `--requests` greedy requests of `--new` tokens each,
submitted at once (`--slots` decode slots). Settings:
- `base`: an engine without adapters (the programs with no low-rank path);
- `loaded, base rows`: the engine holding `--adapters` rank-8 adapters, every request on the base
  (what loading adapters costs the base model's users);
- `mixed`: the same engine, the requests spread over the base and every adapter (one batch);
- `merged, one engine each`: the peer without shared weights: one engine per adapter over merged
  params (plus the base's), each serving its own requests; sequentially, as one set of decode
  slots would. Its weight memory is (adapters + 1) x the base's.
Per setting: generated tokens/s, the median of `--runs` interleaved runs after a warm-up run.
The host's float32 matmul peak is printed first.

    python benchmarks/lora_serving.py [--requests 32] [--new 64] [--adapters 3] [--runs 3]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from gpt_jax import lora  # noqa: E402
from gpt_jax.flops import measure_matmul_peak  # noqa: E402
from gpt_jax.model import GPTConfig  # noqa: E402
from gpt_jax.serve.engine import Engine  # noqa: E402
from gpt_jax.serve.requests import Done, Request  # noqa: E402
from helpers import random_params, small_tokenizer  # noqa: E402

CONFIG = GPTConfig(family="llama", vocab_size=2048, max_seq_len=256, n_layers=4, d_model=128,
                   n_heads=4, init_std=0.02)


def serve(engine: Engine, jobs: list[tuple[list[int], str | None]], new: int) -> float:
    """Seconds to serve every (prompt, adapter) job, all submitted at once."""
    left = threading.Semaphore(0)

    def on_event(e):
        if isinstance(e, Done):
            left.release()

    t = time.perf_counter()
    for prompt, adapter in jobs:
        engine.submit(Request(prompt, new, on_event, adapter=adapter))
    for _ in jobs:
        left.acquire()
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--requests", type=int, default=32)
    p.add_argument("--new", type=int, default=64)
    p.add_argument("--adapters", type=int, default=3)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--slots", type=int, default=16)
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args()
    print(f"float32 matmul peak: {measure_matmul_peak() / 1e9:.0f} GFLOP/s")
    tok = small_tokenizer()
    params = random_params(CONFIG, std=0.02)
    cfg = lora.LoRAConfig(rank=args.rank, alpha=2.0 * args.rank)
    adapters = {}
    for i in range(args.adapters):
        ad = lora.init_adapter(params, cfg, jax.random.key(i))
        ad = jax.tree.map(lambda x, i=i: x + 0.02 * jax.random.normal(jax.random.key(100 + i),
                                                                       x.shape), ad)
        adapters[f"a{i}"] = lora.Adapter(ad, cfg)
    rng = np.random.default_rng(0)
    prompts = [[int(t) for t in rng.integers(0, 250, 24)] for _ in range(args.requests)]
    names = [None, *adapters]
    spread = [names[i % len(names)] for i in range(args.requests)]
    kw = dict(n_slots=args.slots, prefix_cache_mb=0)

    base = Engine(params, CONFIG, tok, **kw)
    shared = Engine(params, CONFIG, tok, adapters=adapters, **kw)
    merged = {n: Engine(lora.merge(params, adapters[n]).params, CONFIG, tok, **kw)
              for n in adapters}
    engines = [base, shared, *merged.values()]
    for e in engines:
        e.warmup(max_chunk=32)
        e.start()

    def per_engine():
        total = serve(base, [(q, None) for q, a in zip(prompts, spread) if a is None], args.new)
        for n, e in merged.items():
            total += serve(e, [(q, None) for q, a in zip(prompts, spread) if a == n], args.new)
        return total

    settings = {
        "base (no adapters)": lambda: serve(base, [(q, None) for q in prompts], args.new),
        "loaded, base rows": lambda: serve(shared, [(q, None) for q in prompts], args.new),
        "mixed, one batch": lambda: serve(shared, list(zip(prompts, spread)), args.new),
        "merged, one engine each": per_engine,
    }
    times = {k: [] for k in settings}
    for run in range(args.runs + 1):  # the first run warms every shape up
        for name, fn in settings.items():
            s = fn()
            if run:
                times[name].append(s)
    for e in engines:
        e.stop()
    tokens = args.requests * args.new
    ref = tokens / statistics.median(times["base (no adapters)"])
    print(f"{args.requests} requests x {args.new} tokens, {args.adapters} adapters of rank "
          f"{args.rank} (+ the base), {args.slots} slots; median of {args.runs} runs")
    for name, ts in times.items():
        rate = tokens / statistics.median(ts)
        print(f"  {name:26s} {rate:9.0f} tokens/s   {rate / ref:5.2f}x base")


if __name__ == "__main__":
    main()
