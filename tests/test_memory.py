"""Retrieval memory (gpt_jax/memory/): BM25 scores equal Lucene's formula computed by hand, the
threshold drops unrelated hits, the synthetic memory set is deterministic and recall@5 >= 0.9 on
it, chunks overlap and cover the text, and the SQLite store keeps owners and conversations apart,
replaces a re-added file whole and is seen by a fresh index after any write."""
import math
import sqlite3

import numpy as np
import pytest

from gpt_jax.memory.index import BM25Index, terms
from gpt_jax.memory.store import MemoryStore, chunk_text
from gpt_jax.memory.synthetic import make_facts

CORPUS = ["the cat sat on the mat", "dogs chase cats and cats chase mice",
          "a mat for the dog", "quantum physics lecture notes"]


def lucene_bm25(query, corpus, doc, k1=1.5, b=0.75):
    """Lucene's BM25 (8.0 on: no (k1 + 1) factor, which ranks the same) over bm25s's terms."""
    docs = terms(corpus)
    avgdl = np.mean([len(d) for d in docs])
    score = 0.0
    for t in set(terms([query])[0]):
        df = sum(t in d for d in docs)
        if df == 0:
            continue
        idf = math.log(1 + (len(docs) - df + 0.5) / (df + 0.5))
        tf = docs[doc].count(t)
        score += idf * tf / (tf + k1 * (1 - b + b * len(docs[doc]) / avgdl))
    return score


def test_bm25_scores_are_lucenes_formula():
    index = BM25Index(CORPUS, ids=["a", "b", "c", "d"])
    hits = index.search("cats chase the mat", k=4)
    by_hand = {i: lucene_bm25("cats chase the mat", CORPUS, k) for k, i in enumerate("abcd")}
    assert by_hand["d"] == 0 and min(by_hand["a"], by_hand["b"], by_hand["c"]) > 0
    # best first, "d" (no query term) never returned, each score Lucene's
    assert [h.id for h in hits] == sorted("abc", key=lambda i: -by_hand[i])
    for h in hits:
        assert h.score == pytest.approx(by_hand[h.id], rel=1e-5)
    assert index.search("zebra", k=4) == []  # no term in the corpus
    cut = sorted(by_hand.values())[-1] - 1e-3  # only the best clears it
    assert [h.id for h in index.search("cats chase the mat", k=4, min_score=cut)] == [hits[0].id]
    assert BM25Index([]).search("cat") == []
    with pytest.raises(ValueError, match="ids"):
        BM25Index(CORPUS, ids=[1])


def test_synthetic_memory_set_and_recall():
    facts = make_facts(2000, seed=3)
    assert facts == make_facts(2000, seed=3) and facts != make_facts(2000, seed=4)
    assert len({(f.person, f.attribute) for f in facts}) == 2000
    for f in facts:
        assert f.value in f.text and f.person in f.question and f.value not in f.question
    index = BM25Index([f.text for f in facts])
    hits = index.search_many([f.question for f in facts], k=5)
    recall = np.mean([f.id in [h.id for h in row] for f, row in zip(facts, hits)])
    assert recall >= 0.9
    with pytest.raises(ValueError, match="distinct"):
        make_facts(10**6)


def test_chunks_overlap_and_cover_the_text():
    words = [f"w{i}" for i in range(1000)]
    text = " ".join(words[:500]) + "\n\n" + " ".join(words[500:])
    chunks = chunk_text(text, words=100, overlap=10)
    split = [c.split() for c in chunks]
    assert all(len(c) <= 100 for c in split)
    assert sorted({w for c in split for w in c}, key=lambda w: int(w[1:])) == words
    for a, b in zip(split, split[1:]):
        assert a[-10:] == b[:10]
    assert "\n\n" in next(c for c in chunks if "w499" in c and "w500" in c)
    assert chunk_text("") == []
    with pytest.raises(ValueError, match="overlap"):
        chunk_text(text, words=10, overlap=10)


def test_store_owners_conversations_files_and_fresh_indexes(tmp_path):
    from gpt_jax.serve.conversations import ConversationStore

    db = tmp_path / "chats.sqlite"
    chats = ConversationStore(db)  # the web chat's file: both live in it
    store = MemoryStore(db)
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "a.txt").write_text("The boiler room key hangs behind door 7.")
    (docs / "sub" / "b.md").write_text("Lunch is served at noon in the atrium.")
    (docs / "c.bin").write_bytes(b"\x00\xff" * 10)
    assert store.add_path("alice", docs) == {str(docs / "a.txt"): 1, str(docs / "sub" / "b.md"): 1}
    with pytest.raises(FileNotFoundError):
        store.add_path("alice", tmp_path / "missing")
    store.add_memory("alice", "conv-1", "My locker number is 4821.")
    store.add_memory("alice", "conv-2", "My locker number is 1234.")
    store.add_memory("bob", "conv-1", "Bob's locker number is 9999.")
    hits = store.retriever("alice", "conv-1").search("what is my locker number", k=5)
    assert [h.text for h in hits] == ["My locker number is 4821."]
    assert store.retriever("alice").search("locker number") == []  # documents only
    assert store.retriever("bob", "conv-1").search("boiler room key") == []  # alice's files
    key = store.retriever("alice").search("where is the boiler room key")
    assert key[0].text.startswith("The boiler room key")
    # re-adding a file replaces its chunks; the next index sees it
    (docs / "a.txt").write_text("The boiler room key is now in the red box.")
    store.add_path("alice", docs / "a.txt")
    texts = [x["text"] for x in store.items("alice", "documents")]
    assert texts == ["Lunch is served at noon in the atrium.",
                     "The boiler room key is now in the red box."]
    assert "red box" in store.retriever("alice").search("boiler room key")[0].text
    # a write through another connection is seen too (SQLite's data_version)
    other = MemoryStore(db)
    other.add_memory("alice", "conv-1", "My bike lock code is 5555.")
    other.close()
    assert store.retriever("alice", "conv-1").search("bike lock code")[0].text.endswith("5555.")
    store.delete_scope("alice", "conv-1")
    assert store.items("alice", "memories", "conv-1") == []
    with sqlite3.connect(db) as raw:
        tables = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"conversations", "messages", "memory_items"} <= tables
    store.close()
    chats.close()


def test_answer_from_context_task():
    from gpt_jax.memory.synthetic import context_task

    task = context_task(200, 50, k=3, seed=1)
    assert task["train"] == context_task(200, 50, k=3, seed=1)["train"]
    held_facts, held = task["heldout"]
    train_pairs = {(c[0]["content"], c[1]["content"]) for c in task["train"]}
    for fact, conv in zip(held_facts, held):
        user, reply = conv
        assert len(user["context"]) == 3 and fact.text in user["context"]
        assert len(set(user["context"])) == 3
        assert reply == {"role": "assistant", "content": fact.text} and fact.value in fact.text
        assert (user["content"], reply["content"]) not in train_pairs
    for conv in task["train"]:
        assert conv[1]["content"] in conv[0]["context"]  # the answer is copied from the context


def test_held_out_facts_never_appear_in_training_contexts():
    from gpt_jax.memory.synthetic import context_task

    task = context_task(300, 40, k=3, seed=2)
    held_facts, _ = task["heldout"]
    trained = {hit for conv in task["train"] for hit in conv[0]["context"]}
    assert not trained & {f.text for f in held_facts}


@pytest.mark.parametrize("value, reply, right", [
    ("4821", "Mia Chen's locker number is 4821.", True),
    ("4821", "Mia Chen's locker number is 48210.", False),
    ("4821", "It is 14821.", False),
    ("teal", "Her favorite color is Teal.", True),
    ("May 5", "Leo was born on May 15.", False),
    ("May 5", "Leo was born on May 5.", True),
    ("LX123", "Flight LX123.", True),
])
def test_an_answer_is_right_when_it_holds_the_value_as_a_word(value, reply, right):
    from gpt_jax.memory.stage import is_right

    assert is_right(value, reply) is right


def test_context_task_in_the_sft_mixture_masks_the_retrieved_facts():
    from gpt_jax.data.tasks_data import context_conversations, tasks_config
    from helpers import small_tokenizer

    tok = small_tokenizer()
    context = tasks_config("arithmetic").context
    assert context.weight == 0.0  # off unless a config turns it on (sft_tiny: 1.0)
    context.update(facts=60, heldout=5)
    train, held = context_conversations(context, "train"), context_conversations(context, "heldout")
    assert (len(train), len(held)) == (55, 5)
    ids, mask = tok.render_chat(train[0])
    start, end = tok.token_id("retrieval_start"), tok.token_id("retrieval_end")
    assert ids.count(start) == ids.count(end) == 3
    inside = False
    for t, m in zip(ids, mask):
        inside = (inside or t == start) and t != end
        if inside or t in (start, end):
            assert m == 0  # retrieved text is never a target
    reply = tok.encode(train[0][1]["content"])
    assert sum(mask) >= len(reply)  # the copied fact is
