"""Retrieval memory: BM25 (bm25s) over documents a user points at and facts stated in earlier
conversations, kept in SQLite (the web chat's database where there is one).

- `store.MemoryStore`: the two collections on disk (`documents`: chunks of files; `memories`:
  per-conversation facts), owned like the web chat's conversations;
- `index.BM25Index`: a BM25 index over a collection's texts, top-k above a relevance threshold;
- `synthetic`: the synthetic memory set (people's facts, paraphrased questions) the benchmark
  and the tests measure recall on.
"""
