"""The web chat's conversations in SQLite: a message tree per conversation, owned by an API key.

Open WebUI's model, trimmed: a conversation holds messages; each message has a parent (None for
the first turn), so editing a user message adds a sibling user message (a branch) and
regenerating adds a sibling assistant message. `leaf` is the message the conversation shows: the
visible thread is the path root..leaf, and it is what the model sees as history. Switching
branches moves `leaf`.

Every write is one transaction (`BEGIN IMMEDIATE` ... `COMMIT`, WAL journal): a message and the
conversation's new leaf land together or not at all, so a server killed at any point leaves a
consistent database (at worst the last reply is missing and the leaf is the user's message).
Every read and write names its owner (a hash of the API key, "local" without one): another
owner's conversation is `NotFound`, exactly like a missing one.
"""
from __future__ import annotations

import json
import secrets
import sqlite3
import time
from pathlib import Path

from gpt_jax.sqlite_store import SQLiteStore

SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    title TEXT,
    model TEXT,
    temperature REAL NOT NULL,
    leaf TEXT,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS conversations_by_owner ON conversations (owner, updated DESC);
CREATE TABLE IF NOT EXISTS messages (
    id TEXT PRIMARY KEY,
    conversation TEXT NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    parent TEXT REFERENCES messages (id) ON DELETE CASCADE,
    role TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
    content TEXT NOT NULL,
    parts TEXT NOT NULL,
    model TEXT,
    finish_reason TEXT,
    flagged INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_by_conversation ON messages (conversation);
"""
CONVERSATION_COLUMNS = "id, title, model, temperature, leaf, created, updated"
MESSAGE_COLUMNS = "id, parent, role, content, parts, model, finish_reason, flagged, created"


class NotFound(KeyError):
    """No such conversation or message for this owner."""


class InvalidTree(ValueError):
    """A message whose parent would break the tree (wrong conversation, two user turns in a row)."""


def _new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(8)}"


class ConversationStore(SQLiteStore):
    """Thread-safe store at `path` (`gpt_jax.sqlite_store`: one connection, transactions)."""

    def __init__(self, path: str | Path):
        super().__init__(path, SCHEMA)

    # conversations ---------------------------------------------------------------------------
    def list(self, owner: str) -> list[dict]:
        """The owner's conversations, most recently updated first."""
        rows = self._read(f"SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE owner = ? "
                          "ORDER BY updated DESC, rowid DESC", (owner,))
        return [dict(r) for r in rows]

    def create(self, owner: str, model: str | None, temperature: float) -> dict:
        cid, now = _new_id("conv"), time.time()
        with self._write() as db:
            db.execute("INSERT INTO conversations (id, owner, title, model, temperature, leaf, "
                       "created, updated) VALUES (?, ?, NULL, ?, ?, NULL, ?, ?)",
                       (cid, owner, model, temperature, now, now))
        return self.get(owner, cid)

    def get(self, owner: str, cid: str) -> dict:
        rows = self._read(f"SELECT {CONVERSATION_COLUMNS} FROM conversations "
                          "WHERE id = ? AND owner = ?", (cid, owner))
        if not rows:
            raise NotFound(cid)
        return dict(rows[0])

    def update(self, owner: str, cid: str, **fields) -> dict:
        """Set any of title, model, temperature, leaf (a message of this conversation)."""
        unknown = set(fields) - {"title", "model", "temperature", "leaf"}
        if unknown:
            raise TypeError(f"unknown conversation fields {sorted(unknown)}")
        with self._write() as db:
            self._owned(db, owner, cid)
            if fields.get("leaf") is not None:
                self._message(db, cid, fields["leaf"])
            sets = ", ".join(f"{k} = ?" for k in fields)
            if sets:
                db.execute(f"UPDATE conversations SET {sets}, updated = ? WHERE id = ?",
                           (*fields.values(), time.time(), cid))
        return self.get(owner, cid)

    def set_title_if_missing(self, owner: str, cid: str, title: str) -> bool:
        """Title a conversation that has none yet (a rename by the user wins the race)."""
        with self._write() as db:
            cur = db.execute("UPDATE conversations SET title = ? WHERE id = ? AND owner = ? AND "
                             "title IS NULL", (title, cid, owner))
            return cur.rowcount == 1

    def delete(self, owner: str, cid: str) -> None:
        with self._write() as db:
            self._owned(db, owner, cid)
            db.execute("DELETE FROM conversations WHERE id = ?", (cid,))

    # messages --------------------------------------------------------------------------------
    def messages(self, owner: str, cid: str) -> list[dict]:
        """Every message of the conversation (the whole tree), oldest first."""
        self.get(owner, cid)
        rows = self._read(f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE conversation = ? "
                          "ORDER BY rowid", (cid,))
        return [_message_dict(r) for r in rows]

    def thread(self, owner: str, cid: str, leaf: str) -> list[dict]:
        """The path root..`leaf`: the history the model answers."""
        by_id = {m["id"]: m for m in self.messages(owner, cid)}
        if leaf not in by_id:
            raise NotFound(leaf)
        path, at = [], leaf
        while at is not None:
            path.append(by_id[at])
            at = by_id[at]["parent"]
        return path[::-1]

    def add_message(self, owner: str, cid: str, parent: str | None, role: str, content: str,
                    parts: list | None = None, model: str | None = None,
                    finish_reason: str | None = None, flagged: bool = False) -> dict:
        """Append a message under `parent` and make it the conversation's leaf, atomically.
        Turns alternate: a user message starts the tree or answers an assistant message; an
        assistant message answers a user message."""
        mid, now = _new_id("msg"), time.time()
        parts = [{"type": "text", "text": content}] if parts is None else parts
        with self._write() as db:
            self._owned(db, owner, cid)
            parent_role = self._message(db, cid, parent)["role"] if parent is not None else None
            expected = {"user": (None, "assistant"), "assistant": ("user",)}.get(role)
            if expected is None:
                raise InvalidTree(f"role must be user or assistant, not {role!r}")
            if parent_role not in expected:
                raise InvalidTree(f"a {role} message cannot follow "
                                  f"{'nothing' if parent_role is None else 'a ' + parent_role}")
            db.execute(f"INSERT INTO messages ({MESSAGE_COLUMNS}, conversation) VALUES "
                       "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (mid, parent, role, content, json.dumps(parts, ensure_ascii=False), model,
                        finish_reason, int(flagged), now, cid))
            db.execute("UPDATE conversations SET leaf = ?, updated = ? WHERE id = ?",
                       (mid, now, cid))
        return self.message(owner, cid, mid)

    def message(self, owner: str, cid: str, mid: str) -> dict:
        self.get(owner, cid)
        rows = self._read(f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = ? AND "
                          "conversation = ?", (mid, cid))
        if not rows:
            raise NotFound(mid)
        return _message_dict(rows[0])

    # inside a transaction ----------------------------------------------------------------------
    @staticmethod
    def _owned(db, owner: str, cid: str) -> None:
        if db.execute("SELECT 1 FROM conversations WHERE id = ? AND owner = ?",
                      (cid, owner)).fetchone() is None:
            raise NotFound(cid)

    @staticmethod
    def _message(db, cid: str, mid: str) -> sqlite3.Row:
        row = db.execute("SELECT role FROM messages WHERE id = ? AND conversation = ?",
                         (mid, cid)).fetchone()
        if row is None:
            raise NotFound(mid)
        return row


def _message_dict(row: sqlite3.Row) -> dict:
    out = dict(row)
    out["parts"] = json.loads(out["parts"])
    out["flagged"] = bool(out["flagged"])
    return out
