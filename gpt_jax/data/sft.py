"""SFT input pipeline (grain): weighted mixture of chat conversations, packed into (B, T+1) rows.

Each conversation is rendered once with the chat template (`Tokenizer.render_chat`: ids + loss
mask, 1 on assistant tokens and their end token) and cut to T+1 tokens; conversations with nothing
to learn (no assistant turn) are dropped and counted in `dropped`. grain shuffles each source
(reshuffled per epoch, repeated) and mixes them by `config.data.sft_weights`.

Packing (`config.data.pack_conversations`): row j of step k reads the mixed stream from element
(k*B + j) * MAX_PER_ROW, MAX_PER_ROW conversations, and packs each one that still fits (the first
is always taken, cut to T+1); the others are skipped. So batch k is a pure function of (seed, k) and resume is exact
(state = {"step": k}). Without packing a row holds one conversation. Rows carry
    tokens     int32 [B, T+1]  (pad = <|pad|>)
    loss_mask  int32 [B, T+1]  aligned with tokens; the target mask is loss_mask[:, 1:]
    segment_ids int32 [B, T+1] 1, 2, ... per packed conversation, 0 on padding
    positions  int32 [B, T+1]  restart at 0 in every segment
The model must not attend across segments: attend only where segment_ids[q] == segment_ids[k].
"""
from __future__ import annotations


import grain
import jax
import numpy as np

from gpt_jax.data import registry
from gpt_jax.data.step_batches import StepIndexedBatches

MAX_PER_ROW = 8


def render_source(builder, split: str, tokenizer, max_len: int) -> tuple[list, int]:
    """[(ids, mask)] for every conversation of one split, and how many were dropped."""
    out, dropped = [], 0
    for rec in registry.read_records(builder, split):
        ids, mask = tokenizer.render_chat(rec["messages"])
        ids, mask = ids[:max_len], mask[:max_len]
        if sum(mask) == 0:
            dropped += 1
            continue
        out.append((np.asarray(ids, np.int32), np.asarray(mask, np.int32)))
    return out, dropped


class SFTIterator(StepIndexedBatches):
    def __init__(self, rendered: dict[str, list], weights: dict[str, float], *, batch_size: int,
                 seq_len: int, seed: int, split: str, pad_id: int, pack: bool,
                 loader_threads: int = 2, prefetch: int = 4):
        self.split, self.seed, self.batch_size, self.seq_len = split, seed, batch_size, seq_len
        self.source_names = list(weights)
        P, p = jax.process_count(), jax.process_index()
        if batch_size % P:
            raise ValueError(f"batch_size {batch_size} is not divisible by {P} processes")
        local = batch_size // P  # multi-host: this process's rows only (see pipeline.shard_batch)
        per_source = []
        for i, name in enumerate(self.source_names):
            if not rendered[name]:
                raise ValueError(f"{name}/{split} has no trainable conversations")
            ds = grain.MapDataset.source(rendered[name]).shuffle(seed=(seed * 1_000_003 + i) % 2**32)
            per_source.append(ds.repeat().map(lambda x, i=i: (*x, i)))
        mixed = grain.MapDataset.mix(per_source, [weights[n] for n in self.source_names])
        width, per_row = seq_len + 1, (MAX_PER_ROW if pack else 1)

        def make_row(slot: int) -> tuple:
            tokens = np.full(width, pad_id, np.int32)
            mask, seg, pos = (np.zeros(width, np.int32) for _ in range(3))
            used, n = 0, 0
            for k in range(per_row):
                ids, m, _ = mixed[slot * per_row + k]
                if used + len(ids) > width and n > 0:
                    continue  # does not fit: skipped; a later, shorter one may
                ids, m = ids[: width - used], m[: width - used]
                sl = slice(used, used + len(ids))
                tokens[sl], mask[sl], seg[sl], pos[sl] = ids, m, n + 1, np.arange(len(ids))
                used, n = used + len(ids), n + 1
            return tokens, mask, seg, pos

        def make_batch(step: int) -> dict:
            rows = [make_row(step * batch_size + p * local + j) for j in range(local)]
            keys = ("tokens", "loss_mask", "segment_ids", "positions")
            return {k: np.stack([r[i] for r in rows]) for i, k in enumerate(keys)}

        self._serve(make_batch, loader_threads, prefetch)
