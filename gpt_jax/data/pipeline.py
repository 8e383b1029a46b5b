"""Pretraining input pipeline (grain): weighted mixture of token caches -> (B, T+1) windows.

Per source, the split's token stream (eos-separated documents, gpt_jax/data/token_cache.py) is cut
into non-overlapping windows of T+1 tokens at stride T; grain shuffles each source's windows
(reshuffled every epoch, infinitely repeated) and mixes the sources with the configured weights
(grain's deterministic proportional interleave, so every stretch of batches has the right shares).

Batch k is a pure function of (seed, k): row j of process p reads mixed element k*B + p*B/P + j.
The iterator state is just {"step": k} (+ counters), so a resumed run sees exactly the batches it
would have seen; grain threads prefetch ahead. Each batch is
    {"tokens": int32 [B_local, T+1], "source_ids": int32 [B_local]}
with `source_names[source_ids[i]]` naming row i's source.

Multi-host: every process builds the same datasets and reads only its rows (B_local = B / P);
`shard_batch` then assembles the global array with `jax.make_array_from_process_local_data`;
`tokens_by_source` still counts the whole global batch (docs/multihost.md).
On one host it is `jax.device_put(batch, sharding)`.
"""
from __future__ import annotations

from pathlib import Path

import grain
import jax
import numpy as np

from gpt_jax.data import token_cache
from gpt_jax.data.step_batches import StepIndexedBatches
from gpt_jax.data.token_cache import TokenShards


class WindowSource:
    """Random access to the (T+1)-token windows of one tokenized split (grain data source)."""

    def __init__(self, shards: TokenShards, seq_len: int):
        self.seq_len = seq_len
        counts = [max(0, (len(s) - 1) // seq_len) for s in shards.shards]
        self._shards = shards.shards
        self._starts = np.cumsum([0] + counts)
        if self._starts[-1] == 0:
            raise ValueError(f"{shards.path}: {shards.n_tokens} tokens is too few for one "
                             f"window of {seq_len + 1}")

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __getitem__(self, index: int) -> np.ndarray:
        s = int(np.searchsorted(self._starts, index, side="right")) - 1
        off = (index - int(self._starts[s])) * self.seq_len
        return np.asarray(self._shards[s][off : off + self.seq_len + 1], dtype=np.int32)


def normalized_weights(weights) -> dict[str, float]:
    """{name: weight > 0} in sorted-name order, summing to 1."""
    w = {k: float(v) for k, v in sorted(dict(weights).items()) if float(v) > 0}
    if not w:
        raise ValueError("no source has a positive weight")
    total = sum(w.values())
    return {k: v / total for k, v in w.items()}


def resolve_cache_dir(config, workdir: str | None, cache_dir: str | None) -> Path:
    chosen = cache_dir or config.data.cache_dir or (workdir and str(Path(workdir) / "data_cache"))
    if not chosen:
        raise ValueError("set config.data.cache_dir, or pass workdir= or cache_dir=")
    return Path(chosen)


class PretrainIterator(StepIndexedBatches):
    """next() -> batch dict; get_state()/set_state() for exact resume; per-source counters."""

    def __init__(self, sources: dict[str, TokenShards], weights: dict[str, float], *,
                 batch_size: int, seq_len: int, seed: int, split: str,
                 loader_threads: int = 2, prefetch: int = 4):
        P, p = jax.process_count(), jax.process_index()
        if batch_size % P:
            raise ValueError(f"batch_size {batch_size} is not divisible by {P} processes")
        self.split, self.seed, self.batch_size, self.seq_len = split, seed, batch_size, seq_len
        self.source_names = list(weights)
        self.weights = weights
        self.source_token_counts = {n: s.n_tokens for n, s in sources.items()}
        # Expected bytes per sampled token: each source's own ratio, weighted by its share.
        self.bytes_per_token = sum(w * sources[n].bytes_per_token for n, w in weights.items())
        windows = [WindowSource(sources[name], seq_len) for name in self.source_names]

        def mix(per_source: list) -> grain.MapDataset:  # element k -> (per-source item, source)
            shuffled = [ds.shuffle(seed=(seed * 1_000_003 + i) % 2**32).repeat()
                        .map(lambda x, i=i: (x, i)) for i, ds in enumerate(per_source)]
            return grain.MapDataset.mix(shuffled, [weights[n] for n in self.source_names])

        mixed = mix([grain.MapDataset.source(w) for w in windows])
        # the same mixture over window indices: which source element k is from, without reading
        # it (several processes: each counts the whole batch's tokens per source, not its rows)
        self._source_of = mix([grain.MapDataset.range(len(w)) for w in windows])
        self.local_batch, self.row_offset = batch_size // P, p * (batch_size // P)

        def make_batch(step: int) -> dict:
            rows = [mixed[k] for k in self.rows(step)]
            return {"tokens": np.stack([r[0] for r in rows]),
                    "source_ids": np.array([r[1] for r in rows], dtype=np.int32)}

        self.tokens_by_source = {n: 0 for n in self.source_names}
        self._serve(make_batch, loader_threads, prefetch)

    def rows(self, step: int) -> range:
        """The mixed-dataset elements that this process reads for batch `step` (its B/P rows)."""
        start = step * self.batch_size + self.row_offset
        return range(start, start + self.local_batch)

    def _on_batch(self, batch: dict) -> None:
        ids = batch["source_ids"]
        if self.local_batch != self.batch_size:  # count all B rows, not this process's B/P
            step = self.step - 1  # __next__ has advanced it
            ids = [self._source_of[k][1]
                   for k in range(step * self.batch_size, (step + 1) * self.batch_size)]
        counts = np.bincount(ids, minlength=len(self.source_names))
        for name, c in zip(self.source_names, counts):
            self.tokens_by_source[name] += int(c) * self.seq_len

    def _extra_state(self) -> dict:
        return {"tokens_by_source": dict(self.tokens_by_source)}

    def _restore_extra(self, state: dict) -> None:
        self.tokens_by_source = {n: int(state["tokens_by_source"].get(n, 0))
                                 for n in self.source_names}


def make_pretrain_iterator(config, tokenizer, split: str, batch_size: int, seq_len: int, seed: int,
                           workdir: str | None = None, cache_dir: str | None = None
                           ) -> PretrainIterator:
    """Builds (or reuses) the token caches of every weighted source and returns the iterator.
    Cache dir: `cache_dir` arg, else config.data.cache_dir, else <workdir>/data_cache."""
    d = config.data
    root = resolve_cache_dir(config, workdir, cache_dir)
    weights = normalized_weights(d.pretrain_weights)
    sources = {
        name: token_cache.load_or_build(
            name, split, tokenizer, data_dir=d.dir or None, cache_dir=root,
            skip_bad_records=d.skip_bad_records, encode_threads=d.encode_threads,
            shard_tokens=d.shard_tokens)
        for name in weights
    }
    return PretrainIterator(sources, weights, batch_size=batch_size, seq_len=seq_len, seed=seed,
                            split=split, loader_threads=d.loader_threads,
                            prefetch=d.prefetch_batches)


def make_sft_iterator(config, tokenizer, split: str, batch_size: int, seq_len: int, seed: int,
                      workdir: str | None = None, cache_dir: str | None = None):
    """Conversation batches (tokens, loss_mask, segment_ids, positions); see gpt_jax/data/sft.py."""
    from gpt_jax.data import registry, sft

    d = config.data
    root = resolve_cache_dir(config, workdir, cache_dir)
    weights = normalized_weights(d.sft_weights)
    rendered, dropped = {}, {}
    for name in weights:
        builder = registry.prepare(
            name, data_dir=d.dir or None, cache_dir=root, skip_bad_records=d.skip_bad_records,
            identity=(d.identity.name, d.identity.author) if name == "identity" else None)
        rendered[name], dropped[name] = sft.render_source(builder, split, tokenizer, seq_len + 1)
    it = sft.SFTIterator(rendered, weights, batch_size=batch_size, seq_len=seq_len, seed=seed,
                         split=split, pad_id=tokenizer.pad_id, pack=d.pack_conversations,
                         loader_threads=d.loader_threads, prefetch=d.prefetch_batches)
    it.dropped = dropped
    it.conversation_counts = {n: len(r) for n, r in rendered.items()}
    return it


def shard_batch(batch: dict, sharding) -> dict:
    """Host batch -> global jax arrays. `sharding` is one NamedSharding for the [B, T+1] arrays
    (lower-rank arrays such as source_ids use its leading axes) or a dict of them per key.
    One process: device_put. Several: each passes its own rows (B/P) and JAX assembles them."""
    out = {}
    for k, v in batch.items():
        v = np.asarray(v)
        s = sharding[k] if isinstance(sharding, dict) else sharding
        if isinstance(s, jax.sharding.NamedSharding) and len(s.spec) > v.ndim:
            s = jax.sharding.NamedSharding(s.mesh, jax.sharding.PartitionSpec(*s.spec[: v.ndim]))
        if jax.process_count() == 1:
            out[k] = jax.device_put(v, s)
        else:
            out[k] = jax.make_array_from_process_local_data(s, v)
    return out
