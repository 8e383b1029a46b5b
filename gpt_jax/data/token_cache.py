"""Pretraining token cache: each text source's split tokenized once into memmap shards.

Layout (all under the run's data cache dir):

    tokens/<tokenizer hash>/<source>-<source fingerprint>/<split>/
        meta.json          n_tokens, n_docs, n_bytes, dtype, shard list, keys
        00000.bin ...      flat uint16 (vocab <= 65536) or uint32 token ids

Each document is followed by <|eos|>, so documents are eos-separated in the stream. The directory
name is the cache key (tokenizer hash, builder version + source file sha256), and a cache is reused
only if meta.json matches the key and every shard has the expected size; otherwise it is rebuilt
into a temp dir and renamed into place (a crash never leaves a half-written cache that looks valid).
Encoding uses the tokenizer's tiktoken fast path with `encode_threads` threads (GIL released).
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gpt_jax.data import registry
from gpt_jax.progress import progress
from gpt_jax.tokenizer import Tokenizer

_DOCS_PER_CALL = 256


@dataclass
class TokenShards:
    """A tokenized split: memmapped shards plus the counts needed for mixing and bits/byte."""

    path: Path
    shards: list[np.memmap]
    n_tokens: int
    n_docs: int
    n_bytes: int

    @property
    def bytes_per_token(self) -> float:
        return self.n_bytes / max(self.n_tokens, 1)


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


def cache_path(cache_dir: str | Path, tokenizer: Tokenizer, name: str, split: str, data_dir) -> Path:
    fp = registry.source_fingerprint(name, data_dir)
    return Path(cache_dir) / "tokens" / tokenizer.hash / f"{name}-{fp}" / split


def load_or_build(
    name: str,
    split: str,
    tokenizer: Tokenizer,
    *,
    data_dir,
    cache_dir: str | Path,
    skip_bad_records: bool = False,
    encode_threads: int = 2,
    shard_tokens: int = 64 * 1024 * 1024,
) -> TokenShards:
    path = cache_path(cache_dir, tokenizer, name, split, data_dir)
    key = {"tokenizer_hash": tokenizer.hash, "source": name, "split": split,
           "dtype": token_dtype(tokenizer.vocab_size).name}
    cached = _load_valid(path, key)
    if cached is not None:
        return cached
    builder = registry.prepare(name, data_dir=data_dir, cache_dir=cache_dir,
                               skip_bad_records=skip_bad_records)
    if split not in builder.info.splits:
        raise KeyError(f"{name} has no split {split!r}; it has {list(builder.info.splits)}")
    _build(builder, split, tokenizer, path, key, encode_threads, shard_tokens)
    loaded = _load_valid(path, key)
    assert loaded is not None, f"token cache at {path} failed validation right after building"
    return loaded


def _load_valid(path: Path, key: dict) -> TokenShards | None:
    meta_file = path / "meta.json"
    if not meta_file.is_file():
        return None
    meta = json.loads(meta_file.read_text())
    if any(meta.get(k) != v for k, v in key.items()):
        return None
    dtype = np.dtype(meta["dtype"])
    shards = []
    for s in meta["shards"]:
        f = path / s["file"]
        if not f.is_file() or f.stat().st_size != s["n_tokens"] * dtype.itemsize:
            return None
        shards.append(np.memmap(f, dtype=dtype, mode="r", shape=(s["n_tokens"],)))
    return TokenShards(path, shards, meta["n_tokens"], meta["n_docs"], meta["n_bytes"])


def _build(builder, split, tokenizer, path: Path, key: dict, threads: int, shard_tokens: int):
    dtype = np.dtype(key["dtype"])
    tmp = path.parent / f".{split}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shards: list[dict] = []
    out, n_in_shard = None, 0
    n_tokens = n_docs = n_bytes = 0
    total = builder.info.splits[split].num_examples
    bar = progress(total=total, desc=f"tokenize {builder.name}/{split}", unit="doc", leave=False,
                   min_interval=30.0, final_line=True)  # lines: every 30 s at most, and at the end

    def write(arr: np.ndarray):
        nonlocal out, n_in_shard
        while arr.size:
            if out is None or n_in_shard >= shard_tokens:
                if out is not None:
                    out.close()
                shards.append({"file": f"{len(shards):05d}.bin", "n_tokens": 0})
                out, n_in_shard = open(tmp / shards[-1]["file"], "wb"), 0
            take = arr[: shard_tokens - n_in_shard]
            take.tofile(out)
            n_in_shard += take.size
            shards[-1]["n_tokens"] += int(take.size)
            arr = arr[take.size :]

    texts: list[str] = []

    def flush():
        nonlocal n_tokens, n_docs, n_bytes
        for ids in tokenizer.encode_batch(texts, num_threads=threads):
            ids.append(tokenizer.eos_id)
            write(np.asarray(ids, dtype=dtype))
            n_tokens += len(ids)
        n_docs += len(texts)
        n_bytes += sum(len(t.encode("utf-8")) for t in texts)
        bar.update(len(texts))
        bar.set_postfix(tokens=n_tokens)
        texts.clear()

    for rec in registry.read_records(builder, split):
        texts.append(rec["text"])
        if len(texts) >= _DOCS_PER_CALL:
            flush()
    flush()
    bar.close()
    if out is not None:
        out.close()
    meta = dict(key, n_tokens=n_tokens, n_docs=n_docs, n_bytes=n_bytes, shards=shards)
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
