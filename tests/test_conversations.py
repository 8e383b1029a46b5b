"""The web chat's SQLite store: the message tree (branches, threads, alternation), owners that
cannot see each other, transactions that roll back whole, and a database that stays consistent
when the writing process is killed mid-stream."""
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from gpt_jax.serve.conversations import ConversationStore, InvalidTree, NotFound


@pytest.fixture
def store(tmp_path):
    s = ConversationStore(tmp_path / "chats.sqlite")
    yield s
    s.close()


def test_tree_threads_and_branches(store):
    c = store.create("alice", "sft", 0.5)
    assert c["title"] is None and c["leaf"] is None and c["model"] == "sft"
    u1 = store.add_message("alice", c["id"], None, "user", "hi")
    a1 = store.add_message("alice", c["id"], u1["id"], "assistant", "hello",
                           parts=[{"type": "text", "text": "hel"}, {"type": "tool_call",
                                  "name": "calculator", "input": "1+1", "output": "2"}],
                           model="sft", finish_reason="stop")
    u2 = store.add_message("alice", c["id"], a1["id"], "user", "2+2?")
    # regenerate: a second reply to u1; edit: a second first turn
    a1b = store.add_message("alice", c["id"], u1["id"], "assistant", "hey")
    assert store.get("alice", c["id"])["leaf"] == a1b["id"]
    assert [m["content"] for m in store.thread("alice", c["id"], u2["id"])] == [
        "hi", "hello", "2+2?"]
    assert [m["id"] for m in store.thread("alice", c["id"], a1b["id"])] == [u1["id"], a1b["id"]]
    u1b = store.add_message("alice", c["id"], None, "user", "hi again")
    assert store.thread("alice", c["id"], u1b["id"]) == [store.message("alice", c["id"],
                                                                       u1b["id"])]
    tree = store.messages("alice", c["id"])
    assert [m["id"] for m in tree] == [u1["id"], a1["id"], u2["id"], a1b["id"], u1b["id"]]
    assert tree[1]["parts"][1] == {"type": "tool_call", "name": "calculator", "input": "1+1",
                                   "output": "2"}
    assert tree[1]["finish_reason"] == "stop" and tree[1]["flagged"] is False
    # switching branches moves the leaf; a leaf must be a message of this conversation
    assert store.update("alice", c["id"], leaf=u2["id"])["leaf"] == u2["id"]
    other = store.create("alice", "sft", 0.5)
    o1 = store.add_message("alice", other["id"], None, "user", "elsewhere")
    with pytest.raises(NotFound):
        store.update("alice", c["id"], leaf=o1["id"])
    with pytest.raises(NotFound):
        store.add_message("alice", c["id"], o1["id"], "assistant", "x")


def test_turns_alternate(store):
    c = store.create("alice", "sft", 0.5)
    u = store.add_message("alice", c["id"], None, "user", "hi")
    with pytest.raises(InvalidTree, match="user message cannot follow a user"):
        store.add_message("alice", c["id"], u["id"], "user", "again")
    with pytest.raises(InvalidTree, match="assistant message cannot follow nothing"):
        store.add_message("alice", c["id"], None, "assistant", "x")
    with pytest.raises(InvalidTree, match="role must be"):
        store.add_message("alice", c["id"], u["id"], "system", "x")
    assert len(store.messages("alice", c["id"])) == 1


def test_owners_are_isolated_and_lists_are_newest_first(store):
    a1 = store.create("alice", "sft", 0.5)
    time.sleep(0.01)
    a2 = store.create("alice", "dpo", 1.0)
    b1 = store.create("bob", "sft", 0.5)
    assert [c["id"] for c in store.list("alice")] == [a2["id"], a1["id"]]
    assert [c["id"] for c in store.list("bob")] == [b1["id"]]
    for call in (lambda: store.get("bob", a1["id"]), lambda: store.messages("bob", a1["id"]),
                 lambda: store.update("bob", a1["id"], title="mine"),
                 lambda: store.delete("bob", a1["id"]),
                 lambda: store.add_message("bob", a1["id"], None, "user", "x")):
        with pytest.raises(NotFound):
            call()
    time.sleep(0.01)
    store.add_message("alice", a1["id"], None, "user", "bump")  # activity moves it to the top
    assert [c["id"] for c in store.list("alice")] == [a1["id"], a2["id"]]
    assert store.set_title_if_missing("alice", a1["id"], "Greeting") is True
    assert store.set_title_if_missing("alice", a1["id"], "Other") is False  # a rename wins
    assert store.set_title_if_missing("bob", a2["id"], "Bob's") is False
    assert store.get("alice", a1["id"])["title"] == "Greeting"
    store.delete("alice", a1["id"])
    assert [c["id"] for c in store.list("alice")] == [a2["id"]]
    with sqlite3.connect(store.path) as db:  # the messages went with it (ON DELETE CASCADE)
        assert db.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 0
    with pytest.raises(TypeError, match="owner"):
        store.update("alice", a2["id"], owner="bob")


def test_a_failed_write_rolls_back_whole(store, monkeypatch):
    c = store.create("alice", "sft", 0.5)
    u = store.add_message("alice", c["id"], None, "user", "hi")
    real_execute = sqlite3.Connection.execute

    class Boom(Exception):
        pass

    def failing_update(self, sql, *args):
        if sql.startswith("UPDATE conversations SET leaf"):
            raise Boom  # after the message's INSERT, before the leaf moves
        return real_execute(self, sql, *args)

    with monkeypatch.context() as m:
        m.setattr(store, "_db", _Wrapped(store._db, failing_update))
        with pytest.raises(Boom):
            store.add_message("alice", c["id"], u["id"], "assistant", "never")
    assert [x["id"] for x in store.messages("alice", c["id"])] == [u["id"]]
    assert store.get("alice", c["id"])["leaf"] == u["id"]
    store.add_message("alice", c["id"], u["id"], "assistant", "works again")


class _Wrapped:
    """A connection whose execute goes through `execute(connection, sql, *args)`."""

    def __init__(self, db, execute):
        self._db, self._execute = db, execute

    def execute(self, sql, *args):
        return self._execute(self._db, sql, *args)

    def __getattr__(self, name):
        return getattr(self._db, name)


WRITER = """
import sys
from gpt_jax.serve.conversations import ConversationStore
s = ConversationStore(sys.argv[1])
c = s.create("alice", "sft", 0.5)
parent = None
print("ready", flush=True)
for i in range(100000):
    u = s.add_message("alice", c["id"], parent, "user", "question %d " % i * 20)
    parent = s.add_message("alice", c["id"], u["id"], "assistant", "answer %d " % i * 50)["id"]
"""


def test_killed_mid_write_leaves_a_consistent_database(tmp_path):
    path = tmp_path / "chats.sqlite"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(1.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    s = ConversationStore(path)
    try:
        with sqlite3.connect(path) as db:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        (conv,) = s.list("alice")
        tree = s.messages("alice", conv["id"])
        assert len(tree) > 10  # it was writing when killed
        ids = {m["id"] for m in tree}
        assert all(m["parent"] is None or m["parent"] in ids for m in tree)
        # the leaf is the newest message: a message and the leaf move together
        assert conv["leaf"] == tree[-1]["id"]
        thread = s.thread("alice", conv["id"], conv["leaf"])
        assert len(thread) == len(tree)
        assert [m["role"] for m in thread] == ["user", "assistant"] * (len(tree) // 2) + [
            "user"] * (len(tree) % 2)
    finally:
        s.close()
