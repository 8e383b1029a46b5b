"""What a grammar costs per decode step: the constrained engine with and without masks, batch 8.

Step time: the decode loop's wall time (sample + forward + host grammar work) per step, the
prompt's prefill excluded; generation per token: the whole call over the tokens it wrote.
Peer: the same host-driven loop (`engine_constrained.generate_constrained`) with every row
unconstrained, so the only difference is the mask work (llguidance fills an int32 bitmask per
row on the host, the jitted sampler unpacks and applies it). Also printed: the host's mask time
per row-token (advance + fill), measured inside the loop, and how much of it the forward hides.
Target: <= 10% step-time overhead at batch 8.

With `--suite`, also the structured-output suite (gpt_jax.eval.structured_suite) on the trained
model, valid rate with and without the constraint.

    python benchmarks/constrained_overhead.py --workdir=runs/tiny [--stage=sft] [--suite]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpt_jax import engine_constrained as EC  # noqa: E402
from gpt_jax import sampling as S  # noqa: E402
from gpt_jax import structured  # noqa: E402
from gpt_jax.checkpoint import load_stage  # noqa: E402
from gpt_jax.structured import Constraint  # noqa: E402
from gpt_jax.tokenizer import Tokenizer  # noqa: E402

SCHEMA = {"type": "object", "additionalProperties": False, "required": ["name", "bio", "age"],
          "properties": {"name": {"type": "string", "maxLength": 40},
                         "bio": {"type": "string", "maxLength": 600},
                         "age": {"type": "integer", "minimum": 0, "maximum": 120}}}


class MaskTimer:
    """Wraps structured.fill_masks and RowMatcher.advance to add up the host's grammar time."""

    def __init__(self):
        self.seconds, self.row_tokens = 0.0, 0
        self._fill, self._advance = structured.fill_masks, structured.RowMatcher.advance

    def __enter__(self):
        def fill(rows, bitmask):
            t = time.perf_counter()
            out = self._fill(rows, bitmask)
            self.seconds += time.perf_counter() - t
            self.row_tokens += len(rows)
            return out

        def advance(matcher, *a):
            t = time.perf_counter()
            out = self._advance(matcher, *a)
            self.seconds += time.perf_counter() - t
            return out

        structured.fill_masks, structured.RowMatcher.advance = fill, advance
        return self

    def __exit__(self, *exc):
        structured.fill_masks, structured.RowMatcher.advance = self._fill, self._advance


def run(params, config, tok, prompts, constrained: bool, steps: int, seed: int,
        fast_forward: bool = True) -> dict:
    stop = (tok.token_id("assistant_end"),)
    # The unconstrained peer has no stop id, so it runs every step; the constrained rows are
    # held open by the long bio string, and `steps` counts the loop iterations actually run.
    sp = S.SamplingConfig(temperature=1.0, max_new_tokens=steps, seed=seed,
                          stop_ids=stop if constrained else ())
    constraints = [Constraint.json_schema(SCHEMA) if constrained else None] * len(prompts)
    counter = {"n": 0, "first": 0.0}
    real = S.decode_step

    def counted(*a, **k):  # counts the loop's steps; the loop's clock starts at the first one
        if counter["n"] == 0:
            counter["first"] = time.perf_counter()
        counter["n"] += 1
        return real(*a, **k)

    S.decode_step = counted
    try:
        with MaskTimer() as timer:
            t = time.perf_counter()
            gen = EC.generate_constrained(params, config, prompts, sp, constraints, tok,
                                          fast_forward=fast_forward)
            end = time.perf_counter()
    finally:
        S.decode_step = real
    return {"seconds": end - t, "loop_s": end - counter["first"], "steps": counter["n"],
            "mask_s": timer.seconds,
            "row_tokens": timer.row_tokens, "tokens": int(gen.lengths.sum())}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--workdir", default="runs/tiny")
    p.add_argument("--stage", default="sft")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=96)
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--suite", action="store_true")
    args = p.parse_args()
    from gpt_jax.flops import cpu_name, measure_matmul_peak

    print(f"host: {cpu_name()}, {os.cpu_count()} cores, float32 matmul peak "
          f"{measure_matmul_peak() / 1e9:.0f} GFLOP/s (measured now)")
    wd = Path(args.workdir)
    tok = Tokenizer.load(wd / "tokenizer" / "tokenizer.json")
    config, params = load_stage(wd, args.stage)
    config, params = S.unstack_layers(config, params)
    prompt = tok.render_for_completion([{"role": "user", "content":
                                         "Describe a person as JSON with a long bio."}])
    prompts = [prompt] * args.batch
    variants = {"no masks": (False, True), "masks": (True, False),
                "masks + forced runs": (True, True)}
    for constrained, ff in variants.values():  # compile every shape once
        run(params, config, tok, prompts, constrained, args.steps, 99, ff)
    per_step = {v: [] for v in variants}
    per_token = {v: [] for v in variants}
    last = {}
    for r in range(args.repeats):  # interleaved, so host drift hits every variant alike
        for name, (constrained, ff) in variants.items():
            res = run(params, config, tok, prompts, constrained, args.steps, r, ff)
            per_step[name].append(res["loop_s"] / res["steps"])
            per_token[name].append(res["seconds"] / res["tokens"])
            last[name] = res
    step = {v: statistics.median(x) for v, x in per_step.items()}
    token = {v: statistics.median(x) for v, x in per_token.items()}
    print(f"model {args.workdir}/{args.stage}: vocab {config.vocab_size}, batch {args.batch}, "
          f"{args.steps} new tokens, median of {args.repeats}")
    for v in variants:
        res = last[v]
        print(f"  {v:20s} step {step[v] * 1e3:6.3f} ms ({step[v] / step['no masks'] - 1:+6.1%})"
              f"  generation per token {token[v] * 1e6:6.1f} us "
              f"({token[v] / token['no masks'] - 1:+6.1%})"
              f"  {res['tokens']} tokens in {res['steps']} steps")
    print(f"decode step overhead of the masks (same steps, no forced runs): "
          f"{step['masks'] / step['no masks'] - 1:+.1%} (target <= +10%)")
    m = last["masks"]
    print(f"host grammar work (advance + fill mask) per row-token: "
          f"{m['mask_s'] / max(m['row_tokens'], 1) * 1e6:.0f} us; "
          f"{m['mask_s'] / m['steps'] * 1e3:.3f} ms per step for {args.batch} rows "
          f"({m['mask_s'] / m['steps'] / step['masks']:.0%} of the masked step, run while the "
          f"forward computes)")
    if args.suite:
        from gpt_jax.eval import structured_suite as suite

        q = tok.render_for_completion([{"role": "user", "content": "Answer in JSON."}])
        for constrained in (True, False):
            res = suite.run_suite(params, config, tok, q, seeds=(0, 1), samples=2,
                                  constrained=constrained)
            print(f"suite ({len(res['cases'])} cases x 4 samples, temperature 1), "
                  f"{'with' if constrained else 'without'} the constraint: valid "
                  f"{res['valid_rate']:.1%}, finished {res['finished_rate']:.1%}")


if __name__ == "__main__":
    main()
