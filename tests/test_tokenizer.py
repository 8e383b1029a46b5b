"""Tokenizer: training, round-trips (property test), fast path == HF path, chat template + mask."""
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpt_jax.tokenizer import SPECIAL_TOKENS, Tokenizer, train_bpe


def _sample_texts(data_dir):
    en = (data_dir / "pretrain/tinyshakespeare/input.txt").read_text()[:300_000]
    zh = []
    import gzip

    with gzip.open(data_dir / "pretrain/chinese_poetry/song_ci.jsonl.gz", "rt") as f:
        for _, line in zip(range(2000), f):
            zh.append("\n".join(json.loads(line)["paragraphs"]))
    return [en[i : i + 2000] for i in range(0, len(en), 2000)] + zh


@pytest.fixture(scope="module")
def tok(data_dir, tmp_path_factory):
    trained = train_bpe(_sample_texts(data_dir), vocab_size=768)
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    trained.save(path)
    return Tokenizer.load(path)


def test_vocab_and_specials(tok):
    assert tok.vocab_size == 768
    assert tok.fast_path_exact
    assert [tok.token_id(n) for n in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    assert tok.bos_id == 0 and tok.eos_id == 1
    # Text that spells a special token is still ordinary text.
    ids = tok.encode("a <|eos|> b")
    assert tok.eos_id not in ids and tok.decode(ids) == "a <|eos|> b"


def test_hash_is_stable_and_content_based(tok, tmp_path, data_dir):
    tok.save(tmp_path / "t.json")
    assert Tokenizer.load(tmp_path / "t.json").hash == tok.hash
    other = train_bpe(_sample_texts(data_dir)[:50], vocab_size=600)
    assert other.hash != tok.hash


def test_every_digit_is_its_own_token(tok):
    """No token holds two digits: not in encoded English or Chinese text, not in the vocab."""
    for text in ("1234567 and 89", "47+38=85, 93 - 58 = 35.", "小明有123个苹果，又买了45个。",
                 "第2024年3月15日", "x=０１２３ ²³"):
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        for piece in ids:
            assert sum(c.isdigit() or c in "²³" for c in tok.decode([piece])) <= 1, text
    for i in range(tok.vocab_size):
        if not tok.is_special(i):
            assert sum(c.isdigit() for c in tok.token_bytes(i).decode("utf-8", "ignore")) <= 1


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_roundtrip_any_unicode(tok, s):
    assert tok.decode(tok.encode(s)) == s
    assert tok.encode(s) == tok.encode_hf(s)


def test_roundtrip_mixed_scripts(tok):
    s = "Hello, 世界! naïve café — 123456 \r\n\t emoji 🙂 \x00 end"
    assert tok.decode(tok.encode(s)) == s
    assert tok.encode_batch([s, s[::-1]]) == [tok.encode_hf(s), tok.encode_hf(s[::-1])]


CONVO = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "Let me check.", "tool_call": "calc('2+2')"},
    {"role": "tool", "content": "4"},
    {"role": "assistant", "content": "It is 4."},
    {"role": "user", "content": "和 3+3 呢？"},
    {"role": "assistant", "content": "六。"},
]


def test_chat_mask_is_exactly_assistant_tokens(tok):
    ids, mask = tok.render_chat(CONVO)
    assert len(ids) == len(mask) and ids[0] == tok.bos_id
    sid = tok.special_ids
    learned = [i for i, m in zip(ids, mask) if m]
    # Rebuild the expected learned tokens: assistant content (+ tool call) + assistant_end.
    expected = []
    for m in CONVO:
        if m["role"] == "assistant":
            expected += tok.encode(m["content"])
            if "tool_call" in m:
                expected += [sid["tool_call_start"], *tok.encode(m["tool_call"]), sid["tool_call_end"]]
            expected.append(sid["assistant_end"])
    assert learned == expected
    # assistant_start itself is never learned; every assistant_end is.
    for i, m in zip(ids, mask):
        if i == sid["assistant_start"]:
            assert m == 0
        if i == sid["assistant_end"]:
            assert m == 1


def test_parse_roundtrip_and_completion(tok):
    ids, _ = tok.render_chat(CONVO)
    assert tok.parse_chat(ids) == CONVO
    prompt = tok.render_for_completion(CONVO)
    assert prompt[-1] == tok.token_id("assistant_start")
    assert prompt[:-1] == tok.render_chat(CONVO[:-1])[0]
    # A generated continuation (with and without its end token) parses back into messages.
    gen = tok.encode("六。")
    full = tok.parse_chat(prompt + gen + [tok.token_id("assistant_end"), tok.eos_id])
    assert full == CONVO
    assert tok.parse_chat(prompt + gen) == CONVO
    with pytest.raises(ValueError):
        tok.parse_chat([tok.bos_id, tok.token_id("user_end")])


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["user", "assistant", "tool"]), st.text(max_size=40)),
        min_size=1,
        max_size=6,
    )
)
def test_parse_roundtrip_property(tok, turns):
    msgs = [{"role": r, "content": c} for r, c in turns]
    assert tok.parse_chat(tok.render_chat(msgs)[0]) == msgs


def test_bad_messages_raise(tok):
    with pytest.raises(ValueError, match="unknown role"):
        tok.render_chat([{"role": "bot", "content": "x"}])
    with pytest.raises(ValueError, match="system"):
        tok.render_chat([{"role": "user", "content": "x"}, {"role": "system", "content": "y"}])
    with pytest.raises(ValueError, match="content"):
        tok.render_chat([{"role": "user"}])


def test_retrieved_context_renders_between_its_tokens_and_parses_back(tok, tmp_path, monkeypatch):
    from gpt_jax import tokenizer as T
    from gpt_jax.data import chat_template as CT

    sid = tok.special_ids
    conv = [{"role": "user", "content": "Which locker is mine?",
             "context": ["My locker number is 4821.", "Lunch is at noon."]},
            {"role": "assistant", "content": "4821"}]
    ids, mask = CT.render_chat(tok, conv)
    want = [tok.bos_id, sid["user_start"], sid["retrieval_start"],
            *tok.encode("My locker number is 4821."), sid["retrieval_end"],
            sid["retrieval_start"], *tok.encode("Lunch is at noon."), sid["retrieval_end"],
            *tok.encode("Which locker is mine?"), sid["user_end"]]
    assert ids[: len(want)] == want and set(mask[: len(want)]) == {0}  # never learned
    assert mask[len(want):] == [0] + [1] * (len(ids) - len(want) - 1)  # the reply is
    assert CT.parse_chat(tok, ids) == conv
    with pytest.raises(ValueError, match="context must be a list of strings on a user"):
        CT.render_chat(tok, [{"role": "assistant", "content": "x", "context": ["y"]}])
    # a tokenizer trained before the retrieval tokens loads, and refuses context clearly
    old = {k: v for k, v in T.SPECIAL_TOKENS.items() if k not in T.OPTIONAL_SPECIALS}
    monkeypatch.setattr(T, "SPECIAL_TOKENS", old)
    before = train_bpe(["hello there, how are you?"] * 50, vocab_size=300, min_frequency=1)
    before.save(tmp_path / "old.json")
    monkeypatch.undo()
    loaded = Tokenizer.load(tmp_path / "old.json")
    assert "retrieval_start" not in loaded.special_ids
    assert CT.parse_chat(loaded, CT.render_chat(loaded, conv[1:])[0]) == conv[1:]
    with pytest.raises(ValueError, match="no retrieval tokens"):
        CT.render_chat(loaded, conv)
