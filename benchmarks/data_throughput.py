"""Data throughput: the loader vs what the tiny train step consumes, and fast vs HF encoding.

1. Loader: tokens/s of `make_pretrain_iterator` (tiny shape: batch 16 x 256, the default
   pretraining mixture, warm token cache) vs tokens/s of the tiny train step (measured here with
   benchmarks/train_throughput.py's `make_ours`, or given with --train_tokens_per_sec).
2. Encode: MB/s of the tiktoken fast path (`Tokenizer.encode_batch`, 2 threads) vs HF
   `tokenizers` `encode_batch` on the same ~20 MB of shipped text (70% English books, 30% Chinese
   poetry), ids checked identical.

Uses <workdir>/tokenizer/tokenizer.json, training it with the tiny preset if missing.
Last line: `loader_ratio=<x> encode_ratio=<y>` (targets: >= 10 and >= 2).

    .venv/bin/python benchmarks/data_throughput.py [--workdir runs/bench_data]
"""
from __future__ import annotations

import argparse
import importlib.util
import statistics
import time
from pathlib import Path

from gpt_jax.data import pipeline, registry, tokenizer_stage
from gpt_jax.tokenizer import Tokenizer

REPO = Path(__file__).resolve().parent.parent
BATCH, SEQ = 16, 256


def tiny_config():
    spec = importlib.util.spec_from_file_location("tok_cfg", REPO / "experiments/configs/tokenizer_tiny.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config()


def loader_tokens_per_sec(config, tok, workdir: str, n_batches: int) -> float:
    it = pipeline.make_pretrain_iterator(config, tok, "train", BATCH, SEQ, seed=0, workdir=workdir)
    for _ in range(10):  # warm-up: threads start, pages fault in
        next(it)
    t0 = time.perf_counter()
    for _ in range(n_batches):
        next(it)
    return n_batches * BATCH * SEQ / (time.perf_counter() - t0)


def train_tokens_per_sec(steps: int) -> float:
    spec = importlib.util.spec_from_file_location("tt", REPO / "benchmarks/train_throughput.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    step, _, _ = mod.make_ours()
    step()  # warm-up
    return mod.BATCH * mod.SEQ / statistics.median(step() for _ in range(steps))


def encode_texts(config, workdir: str, total_mb: float) -> list[str]:
    cache = pipeline.resolve_cache_dir(config, workdir, None)
    texts = []
    for name, share in (("gutenberg_en", 0.7), ("chinese_poetry", 0.3)):
        budget, got = share * total_mb * 1e6, 0
        builder = registry.prepare(name, data_dir=config.data.dir or None, cache_dir=cache)
        for rec in registry.read_records(builder, "train"):
            texts.append(rec["text"])
            got += len(rec["text"].encode())
            if got >= budget:
                break
    return texts


def encode_mb_per_sec(tok: Tokenizer, texts: list[str]) -> tuple[float, float]:
    mb = sum(len(t.encode()) for t in texts) / 1e6
    t0 = time.perf_counter()
    fast = tok.encode_batch(texts, num_threads=2)
    fast_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    slow = [e.ids for e in tok.hf.encode_batch(texts, add_special_tokens=False)]
    hf_s = time.perf_counter() - t0
    if fast != slow:
        raise AssertionError("fast path ids differ from HF ids")
    return mb / fast_s, mb / hf_s


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", default=str(REPO / "runs" / "bench_data"))
    ap.add_argument("--loader_batches", type=int, default=300)
    ap.add_argument("--train_steps", type=int, default=5)
    ap.add_argument("--train_tokens_per_sec", type=float, default=0.0,
                    help="skip measuring the train step; use this figure")
    ap.add_argument("--encode_mb", type=float, default=20.0)
    args = ap.parse_args()

    config = tiny_config()
    summary = tokenizer_stage.run(config, args.workdir)
    tok = Tokenizer.load(summary["path"])
    print(f"tokenizer: vocab {tok.vocab_size}, bytes/token en {summary['bytes_per_token_en']}, "
          f"zh {summary['bytes_per_token_zh']}")

    loader = loader_tokens_per_sec(config, tok, args.workdir, args.loader_batches)
    train = args.train_tokens_per_sec or train_tokens_per_sec(args.train_steps)
    print(f"loader: {loader:,.0f} tokens/s; tiny train step: {train:,.0f} tokens/s")

    texts = encode_texts(config, args.workdir, args.encode_mb)
    fast, hf = encode_mb_per_sec(tok, texts)
    mb = sum(len(t.encode()) for t in texts) / 1e6
    print(f"encode {mb:.1f} MB: fast path {fast:.2f} MB/s, HF encode_batch {hf:.2f} MB/s (ids identical)")
    print(f"loader_ratio={loader / train:.1f} encode_ratio={fast / hf:.2f}")


if __name__ == "__main__":
    main()
