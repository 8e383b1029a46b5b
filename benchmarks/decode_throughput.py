"""Decode throughput: our engine (`sampling.generate`) vs transformers `generate(use_cache=True)`.

Same weights (a random-init HF GPT2LMHeadModel converted with gpt_jax/hf.py), same prompt (32
tokens, repeated per row), greedy, exactly 128 new tokens (no eos stop), float32, CPU, batch 1 and
16. Per engine: new tokens/s (median over >= 3 timed runs after a warm-up/compile run, the
engines' runs interleaved so a drifting host slows both alike) and time-to-first-token (median
time of a 1-new-token generate: prefill + first sample). Also checks that both produce the same
greedy tokens, and prints per batch size, measured in the same run:
- the hardware bound: at batch 1 a step must stream every weight from memory (float32 bytes / the
  measured matrix-vector bandwidth), at batch 16 it must do 2 FLOPs per weight per row (/ the
  measured matmul peak);
- the floor for any XLA decode loop over these weights: the model's weight matmuls alone (no
  attention, norms or sampling) chained in a jit'd loop, timed interleaved with the two engines.
Last line: `ratio_b1=<x> ratio_b16=<y>` (ours / HF).

    .venv/bin/python benchmarks/decode_throughput.py [--runs 3]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers

from gpt_jax import hf, sampling
from gpt_jax.flops import cpu_name, measure_matmul_peak, measure_matvec_bandwidth
from gpt_jax.sampling import SamplingConfig

SHAPE = dict(vocab_size=8192, n_positions=256, n_embd=384, n_layer=6, n_head=6)
PROMPT_LEN, NEW = 32, 128


def timed(fns: list, runs: int) -> list[tuple[float, object]]:
    """Median seconds and last output of each fn, the fns' runs interleaved (a, b, a, b, ...) after
    one warm-up each (compiles ours), so a host whose speed drifts slows them all alike."""
    outs = [fn() for fn in fns]
    times = [[] for _ in fns]
    for _ in range(runs):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            outs[i] = fn()
            times[i].append(time.perf_counter() - t0)
    return [(statistics.median(t), out) for t, out in zip(times, outs)]


def matmul_floor(config, params, batch: int):
    """A jit'd loop of NEW steps doing only the model's weight matmuls on `batch` rows: per layer
    q, k, v, o, fc, proj as 2-D matmuls, then the tied head (gpt2 family). Returns a thunk."""
    d = config.d_model
    layers = [(b["attn"]["q"].reshape(d, -1), b["attn"]["k"].reshape(d, -1),
               b["attn"]["v"].reshape(d, -1), b["attn"]["o"].reshape(-1, d), b["mlp"]["fc"],
               b["mlp"]["proj"]) for b in (params[f"block_{i}"] for i in range(config.n_layers))]

    @jax.jit
    def loop(layers, head, x):
        def step(_, x):
            for q, k, v, o, fc, proj in layers:
                x = x + jnp.tanh(x @ q + x @ k + x @ v) @ o
                x = x + jnp.tanh(x @ fc) @ proj
            return x + 1e-3 * (x @ head.T)[:, :d]
        return jax.lax.fori_loop(0, NEW, step, x)

    x = jnp.ones((batch, d), jnp.float32)
    return lambda: loop(layers, params["wte"], x).block_until_ready()


def bench(batch: int, runs: int, hf_model, config, params, prompt) -> dict:
    ids = torch.tensor([prompt] * batch)
    mask = torch.ones_like(ids)

    def hf_gen(n):
        with torch.no_grad():
            return hf_model.generate(ids, attention_mask=mask, max_new_tokens=n, do_sample=False,
                                     use_cache=True, pad_token_id=0)[:, PROMPT_LEN:].numpy()

    def our_gen(n):
        return sampling.generate(params, config, [prompt] * batch,
                                 SamplingConfig(temperature=0, max_new_tokens=n)).tokens

    (t_ours, ours), (t_hf, theirs), (t_floor, _) = timed(
        [lambda: our_gen(NEW), lambda: hf_gen(NEW), matmul_floor(config, params, batch)], runs)
    assert ours.shape == theirs.shape == (batch, NEW), (ours.shape, theirs.shape)
    (ttft_ours, _), (ttft_hf, _) = timed([lambda: our_gen(1), lambda: hf_gen(1)], runs)
    return {"ours": batch * NEW / t_ours, "hf": batch * NEW / t_hf, "floor": batch * NEW / t_floor,
            "ttft_ours": ttft_ours, "ttft_hf": ttft_hf, "agree": float((ours == theirs).mean())}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    hf_model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        **SHAPE, bos_token_id=0, eos_token_id=0)).eval()
    hf_model.generation_config.eos_token_id = None  # never stop early: exactly NEW tokens
    config, params = hf.from_hf(hf_model)
    config, params = sampling.unstack_layers(config, jax.device_put(params))  # once, at load time
    prompt = np.random.default_rng(0).integers(1, SHAPE["vocab_size"], PROMPT_LEN).tolist()
    print(f"cpu: {cpu_name()} ({os.cpu_count()} cores), torch threads {torch.get_num_threads()}, "
          f"jax {jax.__version__}, transformers {transformers.__version__}, "
          f"load avg {os.getloadavg()[0]:.1f}")
    print(f"model: gpt2 6 layers d=384 vocab 8192; prompt {PROMPT_LEN} tokens, {NEW} new tokens, "
          f"greedy, float32; median of {args.runs} runs after warm-up")
    results, ratios = {}, {}
    for batch in (1, 16):
        r = results[batch] = bench(batch, args.runs, hf_model, config, params, prompt)
        ratios[batch] = r["ours"] / r["hf"]
        print(f"batch {batch:2d}: ours {r['ours']:8.1f} tok/s  TTFT {r['ttft_ours'] * 1e3:6.1f} ms | "
              f"HF {r['hf']:8.1f} tok/s  TTFT {r['ttft_hf'] * 1e3:6.1f} ms | "
              f"ratio {ratios[batch]:.2f}x  same greedy tokens {r['agree']:.1%}", flush=True)
    weights = config.num_params(include_pos=False)
    bandwidth, peak = measure_matvec_bandwidth(), measure_matmul_peak()
    bounds = {1: bandwidth / (4 * weights), 16: peak / (2 * weights)}
    for batch, why in ((1, f"weights streamed at {bandwidth / 1e9:.1f} GB/s"),
                       (16, f"matmuls at the {peak / 1e9:.0f} GFLOP/s peak")):
        r = results[batch]
        floor = r["floor"]
        print(f"batch {batch:2d} bound ({why}): {bounds[batch]:8.1f} tok/s = "
              f"{bounds[batch] / r['hf']:.2f}x HF; ours at {r['ours'] / bounds[batch]:.0%} of it")
        print(f"batch {batch:2d} floor (the model's matmuls alone in a jit'd loop): {floor:8.1f} "
              f"tok/s = {floor / r['hf']:.2f}x HF; ours at {r['ours'] / floor:.0%} of it")
    print(f"ratio_b1={ratios[1]:.2f} ratio_b16={ratios[16]:.2f}")


if __name__ == "__main__":
    main()
