"""The memory collections in SQLite: `documents` (chunks of files a user points at) and
`memories` (facts stated in a conversation), owned like the web chat's conversations.

One table, `memory_items (id, owner, collection, scope, source, position, text, created)`:
`scope` is the conversation for a memory ("" for documents), `source` the file and `position` the
chunk's index in it. It lives in the web chat's database file when given that path (its own
table, its own connection), so one file holds a user's conversations and memories. Every write
is a transaction; re-adding a file replaces its chunks in the same transaction, so a reader never
sees half of a file's chunks.

`retriever(owner, ...)` builds a `BM25Index` over what a query may see: the owner's documents and,
with `conversation`, that conversation's memories (rebuilt only when the items changed, by any
connection: not on every web-chat write to the same file).
"""
from __future__ import annotations

import re
import time
from pathlib import Path

from gpt_jax.memory.index import BM25Index
from gpt_jax.sqlite_store import SQLiteStore

SCHEMA = """
CREATE TABLE IF NOT EXISTS memory_items (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    owner TEXT NOT NULL,
    collection TEXT NOT NULL CHECK (collection IN ('documents', 'memories')),
    scope TEXT NOT NULL DEFAULT '',
    source TEXT NOT NULL DEFAULT '',
    position INTEGER NOT NULL DEFAULT 0,
    text TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS memory_by_owner ON memory_items (owner, collection, scope);
"""
TEXT_SUFFIXES = {".txt", ".md", ".rst", ".py", ".json", ".csv", ".html", ".tex", ""}


def chunk_text(text: str, words: int = 120, overlap: int = 20) -> list[str]:
    """Paragraph-aware chunks of about `words` words, consecutive chunks sharing `overlap` words
    (a fact cut at a boundary is whole in one of the two)."""
    if not 0 <= overlap < words:
        raise ValueError(f"overlap={overlap} must be in [0, words={words})")
    tokens = [w for para in re.split(r"\n\s*\n", text) for w in para.split() + ["\n\n"]]
    tokens = [t for i, t in enumerate(tokens) if t != "\n\n" or 0 < i < len(tokens) - 1]
    chunks, start = [], 0
    while start < len(tokens):
        piece = tokens[start:start + words]
        chunk = " ".join(piece).replace(" \n\n ", "\n\n").strip()
        if chunk:
            chunks.append(chunk)
        if start + words >= len(tokens):
            break
        start += words - overlap
    return chunks


class MemoryStore(SQLiteStore):
    def __init__(self, path: str | Path):
        super().__init__(path, SCHEMA)
        self._cache: dict[tuple, tuple[tuple, BM25Index]] = {}

    def add_document(self, owner: str, source: str, text: str, words: int = 120,
                     overlap: int = 20) -> int:
        """Chunk `text` and store it as `source` (replacing that source's earlier chunks)."""
        chunks = chunk_text(text, words, overlap)
        now = time.time()
        with self._write() as db:
            db.execute("DELETE FROM memory_items WHERE owner = ? AND collection = 'documents' "
                       "AND source = ?", (owner, source))
            db.executemany("INSERT INTO memory_items (owner, collection, source, position, text, "
                           "created) VALUES (?, 'documents', ?, ?, ?, ?)",
                           [(owner, source, i, c, now) for i, c in enumerate(chunks)])
        return len(chunks)

    def add_path(self, owner: str, path: str | Path, words: int = 120, overlap: int = 20) -> dict:
        """Every text file under `path` (a file or a folder, recursively): {source: chunks}."""
        path = Path(path)
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        added = {}
        for f in files:
            if f.suffix.lower() not in TEXT_SUFFIXES:
                continue
            try:
                text = f.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                continue  # not text
            added[str(f)] = self.add_document(owner, str(f), text, words, overlap)
        if not added:
            raise FileNotFoundError(f"no text files under {path}")
        return added

    def add_memory(self, owner: str, conversation: str, text: str) -> int:
        with self._write() as db:
            cur = db.execute("INSERT INTO memory_items (owner, collection, scope, text, created) "
                             "VALUES (?, 'memories', ?, ?, ?)", (owner, conversation, text,
                                                                 time.time()))
            return int(cur.lastrowid)

    def delete_scope(self, owner: str, conversation: str) -> None:
        with self._write() as db:
            db.execute("DELETE FROM memory_items WHERE owner = ? AND collection = 'memories' AND "
                       "scope = ?", (owner, conversation))

    def items(self, owner: str, collection: str, conversation: str | None = None) -> list[dict]:
        sql = ("SELECT id, collection, scope, source, position, text FROM memory_items WHERE "
               "owner = ? AND collection = ?")
        args: list = [owner, collection]
        if conversation is not None:
            sql += " AND scope = ?"
            args.append(conversation)
        return [dict(r) for r in self._read(sql + " ORDER BY id", args)]

    def retriever(self, owner: str, conversation: str | None = None,
                  documents: bool = True) -> BM25Index:
        """A BM25 index over the owner's documents (if `documents`) and the conversation's
        memories; ids are the items' ids. Cached until the store is written to."""
        key, stamp = (owner, conversation, documents), self._stamp()
        cached = self._cache.get(key)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        found = (self.items(owner, "documents") if documents else []) + (
            self.items(owner, "memories", conversation) if conversation is not None else [])
        index = BM25Index([x["text"] for x in found], [x["id"] for x in found])
        self._cache[key] = (stamp, index)
        return index

    def _stamp(self) -> tuple:
        """Changes whenever the items change, by this store or another connection. Items are only
        inserted (ids grow) and deleted (the count drops), so (count, largest id) sees every
        change, while writes to the file's other tables (the web chat's) keep the index."""
        return tuple(self._read("SELECT COUNT(*), MAX(id) FROM memory_items")[0])

