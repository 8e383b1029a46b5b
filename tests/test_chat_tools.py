"""Chat template with in-line tool parts: exact masks, render -> parse round trip, plain text."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpt_jax.data.chat_template import assistant_text, parse_assistant
from gpt_jax.tokenizer import train_bpe

TEXT = ("The quick brown fox jumps over the lazy dog. Numbers 12 34 56 78 and 23 + 45 = 68.\n"
        "What is 12*3? It is 36. Hello world, how are you today?\n")


@pytest.fixture(scope="module")
def tok():
    return train_bpe([TEXT * 3], vocab_size=300, min_frequency=1)


PARTS = [{"type": "text", "text": "Sure: "}, {"type": "tool_call", "text": "23 + 45"},
         {"type": "tool_result", "text": "68"}, {"type": "text", "text": ", so 68."}]


def test_inline_tool_masks_are_exact(tok):
    sid = tok.special_ids
    convo = [{"role": "user", "content": "What is 23+45?"},
             {"role": "assistant", "content": PARTS}]
    ids, mask = tok.render_chat(convo)
    prefix, _ = tok.render_chat(convo[:1])
    want = ([(i, 0) for i in prefix] + [(sid["assistant_start"], 0)]
            + [(i, 1) for i in tok.encode("Sure: ")]
            + [(i, 1) for i in [sid["tool_call_start"], *tok.encode("23 + 45"),
                                sid["tool_call_end"]]]
            + [(i, 0) for i in [sid["tool_result_start"], *tok.encode("68"),
                                sid["tool_result_end"]]]
            + [(i, 1) for i in tok.encode(", so 68.")] + [(sid["assistant_end"], 1)])
    assert list(zip(ids, mask)) == want
    assert tok.parse_chat(ids) == convo
    assert assistant_text(PARTS) == "Sure: 23 + 45 = 68, so 68."


def test_inline_and_message_level_calls_are_unambiguous(tok):
    old = [{"role": "user", "content": "2+2?"},
           {"role": "assistant", "content": "Let me check.", "tool_call": "2+2"},
           {"role": "tool", "content": "4"},
           {"role": "assistant", "content": PARTS, "tool_call": "1+1"},
           {"role": "tool", "content": "2"}]
    assert tok.parse_chat(tok.render_chat(old)[0]) == old
    # Cut off inside an in-line result, and right after a call: still parse.
    ids = tok.render_chat(old[:1])[0] + [tok.token_id("assistant_start")]
    body = tok.render_chat([{"role": "assistant", "content": PARTS}])[0][2:]
    cut = body.index(tok.token_id("tool_result_end"))
    assert tok.parse_chat(ids + body[:cut])[-1]["content"] == PARTS[:3]
    content, call, end = parse_assistant(tok, body[:cut - 3])  # ... tool_call_end, cut
    assert content == "Sure: " and call == "23 + 45" and end == cut - 3


def test_bad_parts_raise(tok):
    def render(parts):
        tok.render_chat([{"role": "assistant", "content": parts}])

    with pytest.raises(ValueError, match="followed by its tool_result"):
        render([{"type": "tool_call", "text": "1+1"}])
    with pytest.raises(ValueError, match="followed by its tool_result"):
        render([{"type": "tool_call", "text": "1+1"}, {"type": "text", "text": "x"}])
    with pytest.raises(ValueError, match="directly follow a tool_call"):
        render([{"type": "tool_result", "text": "2"}])
    with pytest.raises(ValueError, match="type"):
        render([{"type": "image", "text": "x"}])
    with pytest.raises(ValueError, match="text must be a string"):
        render([{"type": "text", "text": 3}])
    with pytest.raises(ValueError, match="content must be a string"):
        tok.render_chat([{"role": "user", "content": [{"type": "text", "text": "x"}]}])


def _merged(parts):
    """What parse returns for rendered parts: adjacent text merged, empty text dropped, a str when
    there is no tool part."""
    out = []
    for p in parts:
        if p["type"] == "text" and out and out[-1]["type"] == "text":
            out[-1] = {"type": "text", "text": out[-1]["text"] + p["text"]}
        elif p["type"] != "text" or p["text"]:
            out.append(dict(p))
    if all(p["type"] == "text" for p in out):
        return "".join(p["text"] for p in out)
    return out


_text = st.text(max_size=12)
_segment = st.one_of(
    st.builds(lambda t: [{"type": "text", "text": t}], _text),
    st.builds(lambda c, r: [{"type": "tool_call", "text": c}, {"type": "tool_result", "text": r}],
              _text, _text))


@settings(max_examples=150, deadline=None)
@given(st.lists(_segment, max_size=5), st.booleans())
def test_render_parse_roundtrip_property(tok, segments, with_user):
    parts = [p for seg in segments for p in seg]
    convo = ([{"role": "user", "content": "hi"}] if with_user else []) + [
        {"role": "assistant", "content": parts}]
    ids, mask = tok.render_chat(convo)
    parsed = tok.parse_chat(ids)
    assert parsed[-1] == {"role": "assistant", "content": _merged(parts)}
    assert assistant_text(parsed[-1]["content"]) == assistant_text(parts)
    # Mask 0 exactly on the tool_result spans (their start/end included) within the turn.
    sid = tok.special_ids
    inside = False
    start = ids.index(sid["assistant_start"])
    for i, m in zip(ids[start + 1:], mask[start + 1:]):
        if i == sid["tool_result_start"]:
            inside = True
        assert m == (0 if inside else 1)
        if i == sid["tool_result_end"]:
            inside = False


@settings(max_examples=100, deadline=None)
@given(st.lists(_segment, max_size=5))
def test_engine_visible_text_equals_assistant_text(tok, segments):
    """What the engine streams for a generated turn == assistant_text of its parsed parts."""
    from gpt_jax.engine_tools import visible_text

    parts = [p for seg in segments for p in seg]
    ids, _ = tok.render_chat([{"role": "assistant", "content": parts}])
    body = ids[2:]  # after <|bos|> <|assistant_start|>, through <|assistant_end|>
    end = tok.token_id("assistant_end")
    assert visible_text(tok, body, skip={end}) == assistant_text(parts)
    content, call, stop = parse_assistant(tok, body)
    assert call is None and stop == len(body) - 1 and content == _merged(parts)
