"""Retrieval on the synthetic memory set: recall@k of the fact a paraphrased question asks for,
and the time per query over N chunks, BM25 (gpt_jax.memory.index, bm25s) against a peer measured
in the same run: TF-IDF cosine by brute force (scikit-learn's TfidfVectorizer + one sparse
matrix-vector product per query, the usual baseline).

Targets: recall@5 >= 0.9; <= 5 ms per query over 10k chunks. Query times are single queries
(what a chat turn pays), median over `--queries`, after a warm-up; index build time is printed
too. The host's float32 matmul peak is printed first, for comparing runs across machines.

    python benchmarks/memory_retrieval.py [--facts 10000] [--queries 500] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpt_jax.flops import measure_matmul_peak  # noqa: E402
from gpt_jax.memory.index import BM25Index  # noqa: E402
from gpt_jax.memory.measure import asked as asked_facts, recall as recall_of, timed  # noqa: E402
from gpt_jax.memory.synthetic import make_facts  # noqa: E402


class TfidfPeer:
    def __init__(self, texts):
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.vectorizer = TfidfVectorizer(stop_words="english")
        self.matrix = self.vectorizer.fit_transform(texts)

    def search(self, query: str, k: int) -> list[int]:
        scores = (self.matrix @ self.vectorizer.transform([query]).T).toarray().ravel()
        top = np.argpartition(-scores, k)[:k]
        return [int(i) for i in top[np.argsort(-scores[top])] if scores[i] > 0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--facts", type=int, default=10_000)
    p.add_argument("--queries", type=int, default=500)
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the figures here")
    args = p.parse_args()
    print(f"float32 matmul peak: {measure_matmul_peak() / 1e9:.0f} GFLOP/s")
    facts = make_facts(args.facts, args.seed)
    texts = [f.text for f in facts]
    asked = asked_facts(facts, args.queries)
    questions = [f.question for f in asked]

    t = time.perf_counter()
    bm25 = BM25Index(texts)
    bm25_build = time.perf_counter() - t
    t = time.perf_counter()
    peer = TfidfPeer(texts)
    peer_build = time.perf_counter() - t

    bm25_ms, bm25_hits = timed(lambda q: [h.id for h in bm25.search(q, args.k)], questions)
    peer_ms, peer_hits = timed(lambda q: peer.search(q, args.k), questions)
    recall = {name: recall_of([f.id for f in asked], found)
              for name, found in (("bm25", bm25_hits), ("tfidf", peer_hits))}
    out = {"facts": args.facts, "queries": len(questions), "k": args.k,
           "recall_at_k": recall["bm25"], "recall_at_k_tfidf": recall["tfidf"],
           "query_ms": bm25_ms, "query_ms_tfidf": peer_ms, "query_ms_vs_tfidf": bm25_ms / peer_ms,
           "build_s": bm25_build, "build_s_tfidf": peer_build}
    print(f"{args.facts:,} chunks, {len(questions)} paraphrased questions, k={args.k}")
    print(f"  BM25 (bm25s):   recall@{args.k} {recall['bm25']:.3f}  {bm25_ms:.3f} ms/query  "
          f"(build {bm25_build:.2f} s)   targets: recall >= 0.9, <= 5 ms")
    print(f"  TF-IDF cosine:  recall@{args.k} {recall['tfidf']:.3f}  {peer_ms:.3f} ms/query  "
          f"(build {peer_build:.2f} s)")
    print(f"  BM25 / TF-IDF query time: {bm25_ms / peer_ms:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
