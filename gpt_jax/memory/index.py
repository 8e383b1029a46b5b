"""A BM25 index (bm25s, Lucene's scoring) over a list of texts: top-k hits above a threshold.

Vector and BM25 search alike always return k hits, relevant or not; `min_score` drops the ones
that share too little with the query (a hit with no query term scores 0 and is never returned).
English stop words are removed and words of two or more characters are terms; numbers such as
"4821" are terms, so a fact is found by its number as well as by its words.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

STOPWORDS = "english"


@dataclasses.dataclass(frozen=True)
class Hit:
    id: object  # the caller's id of the text
    score: float
    text: str


def terms(texts: Sequence[str]) -> list[list[str]]:
    import bm25s

    return bm25s.tokenize(list(texts), stopwords=STOPWORDS, return_ids=False,
                          show_progress=False)


class BM25Index:
    """BM25 over `texts` (ids: the caller's, default 0..n-1)."""

    def __init__(self, texts: Sequence[str], ids: Sequence | None = None, k1: float = 1.5,
                 b: float = 0.75):
        import bm25s

        self.texts = list(texts)
        self.ids = list(range(len(self.texts))) if ids is None else list(ids)
        if len(self.ids) != len(self.texts):
            raise ValueError(f"{len(self.ids)} ids for {len(self.texts)} texts")
        self.bm25 = None
        if self.texts:
            self.bm25 = bm25s.BM25(k1=k1, b=b)
            self.bm25.index(terms(self.texts), show_progress=False)

    def __len__(self) -> int:
        return len(self.texts)

    def search(self, query: str, k: int = 5, min_score: float = 0.0) -> list[Hit]:
        """The best `k` texts for `query` scoring above `min_score`, best first."""
        return self.search_many([query], k, min_score)[0]

    def search_many(self, queries: Sequence[str], k: int = 5,
                    min_score: float = 0.0) -> list[list[Hit]]:
        if self.bm25 is None or not queries:
            return [[] for _ in queries]
        k = min(k, len(self.texts))
        docs, scores = self.bm25.retrieve(terms(queries), k=k, show_progress=False, n_threads=1)
        out = []
        for row_docs, row_scores in zip(np.asarray(docs), np.asarray(scores)):
            out.append([Hit(self.ids[int(d)], float(s), self.texts[int(d)])
                        for d, s in zip(row_docs, row_scores) if s > min_score])
        return out
