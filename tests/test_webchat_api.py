"""The web chat's HTTP API against a real server subprocess (random-weight `sft` and `dpo`, two API
keys): conversations belong to the key that made them, replies stream and are saved as a tree
(greedy regenerate = the same reply; edit = a new branch), the title is the model's own greedy
answer, Stop cancels the row, bad input is a 4xx in OpenAI's error shape, bodies are size-limited,
and the server refuses to listen beyond loopback without a key."""
import httpx2 as httpx
import openai
import pytest

from gpt_jax.serve.__main__ import parse
from gpt_jax.serve.launch import ServerProcess
from gpt_jax.serve.webchat import TITLE_CONTEXT_CHARS, TITLE_PROMPT, clean_title
from helpers import long_greedy_prompt, sse_events, webchat_workdir

ALICE, BOB = "key-alice", "key-bob"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    wd = webchat_workdir(tmp_path_factory.mktemp("webchat_api"))
    with ServerProcess(wd, "--slots=4", "--step-delay-ms=2",
                       "--max-requests=300", f"--api-key={ALICE},{BOB}",
                       "--max-body-kb=64", timeout_s=400) as proc:
        yield proc.url


def as_(key):
    return {"Authorization": f"Bearer {key}"}


def api(server, method, path, key=ALICE, **kw):
    return httpx.request(method, f"{server}{path}", headers=as_(key), timeout=60, **kw)


def post_stream(server, cid, key=ALICE, **body):
    with httpx.stream("POST", f"{server}/api/conversations/{cid}/messages", headers=as_(key),
                      json=body, timeout=120) as res:
        assert res.status_code == 200, res.read()
        return list(sse_events(res))


def assert_error(res, status, param=None, code=None):
    assert res.status_code == status, res.text
    err = res.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if param is not None:
        assert err["param"] == param
    if code is not None:
        assert err["code"] == code


def test_conversations_belong_to_their_key(server):
    page = httpx.get(f"{server}/")  # the page itself holds no data: no key needed
    assert page.status_code == 200 and "data-testid=\"composer\"" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert httpx.get(f"{server}/static/chat.js").status_code == 200
    assert_error(httpx.get(f"{server}/api/conversations"), 401, code="invalid_api_key")
    conv = api(server, "POST", "/api/conversations", json={"model": "dpo", "temperature": 0.3})
    assert conv.status_code == 201
    cid = conv.json()["id"]
    assert conv.json()["model"] == "dpo" and conv.json()["temperature"] == 0.3
    patched = api(server, "PATCH", f"/api/conversations/{cid}",
                  json={"title": "Mine", "model": "sft"}).json()
    assert patched["title"] == "Mine" and patched["model"] == "sft"
    assert [c["id"] for c in api(server, "GET", "/api/conversations").json()["data"]][0] == cid
    assert api(server, "GET", "/api/conversations", key=BOB).json() == {"data": []}
    for method, path, body in [("GET", "", None), ("PATCH", "", {"title": "Bob's"}),
                               ("DELETE", "", None), ("POST", "/stop", None),
                               ("POST", "/messages", {"content": "hi"})]:
        res = api(server, method, f"/api/conversations/{cid}{path}", key=BOB, json=body)
        assert_error(res, 404, code="not_found")
    assert api(server, "GET", f"/api/conversations/{cid}").json()["title"] == "Mine"
    assert_error(api(server, "PATCH", f"/api/conversations/{cid}", json={"model": "gpt-9"}),
                 404, param="model", code="model_not_found")
    assert_error(api(server, "PATCH", f"/api/conversations/{cid}", json={"temperature": 3}),
                 400, param="temperature")
    assert api(server, "DELETE", f"/api/conversations/{cid}").status_code == 204
    assert_error(api(server, "GET", f"/api/conversations/{cid}"), 404)


def test_reply_title_regenerate_and_edit(server):
    cid = api(server, "POST", "/api/conversations", json={"temperature": 0.0}).json()["id"]
    events = post_stream(server, cid, content="Hello there, how are you?", max_tokens=12)
    kinds = [e["type"] for e in events]
    assert kinds[0] == "user" and kinds[-2:] == ["done", "title"], kinds
    assert set(kinds[1:-2]) == {"delta"}
    user, reply = events[0]["message"], events[-2]["message"]
    assert reply["parent"] == user["id"] and reply["role"] == "assistant"
    assert reply["content"] == "".join(e["text"] for e in events if e["type"] == "delta")
    assert reply["finish_reason"] == "length" and reply["model"] == "sft"
    # the title is the model's own greedy answer to the title request after the first exchange
    client = openai.OpenAI(base_url=f"{server}/v1", api_key=ALICE, max_retries=0, timeout=60)
    asked = client.chat.completions.create(model="sft", temperature=0, max_tokens=16, messages=[
        {"role": "user", "content": user["content"][:TITLE_CONTEXT_CHARS]},
        {"role": "assistant", "content": reply["content"][:TITLE_CONTEXT_CHARS]},
        {"role": "user", "content": TITLE_PROMPT}]).choices[0].message.content
    expected = clean_title(asked) or clean_title(user["content"])
    assert events[-1]["title"] == expected
    conv = api(server, "GET", f"/api/conversations/{cid}").json()
    assert conv["title"] == expected and conv["leaf"] == reply["id"]
    # regenerate: a sibling reply under the same user message; greedy, so the same text
    again = post_stream(server, cid, parent=user["id"], max_tokens=12)
    assert [e["type"] for e in again][-1] == "done"  # titled already: no second title
    second = again[-1]["message"]
    assert second["parent"] == user["id"] and second["id"] != reply["id"]
    assert second["content"] == reply["content"]
    # edit the first message: a second root user message, answered
    edit = post_stream(server, cid, parent=None, content="Hi!", max_tokens=4)
    tree = api(server, "GET", f"/api/conversations/{cid}").json()
    roots = [m for m in tree["messages"] if m["parent"] is None]
    assert [m["content"] for m in roots] == ["Hello there, how are you?", "Hi!"]
    assert tree["leaf"] == edit[-1]["message"]["id"] and tree["title"] == expected
    # switch back to the first branch
    assert api(server, "PATCH", f"/api/conversations/{cid}",
               json={"leaf": second["id"]}).json()["leaf"] == second["id"]
    # a second turn answers the whole thread: its history holds the first exchange
    turn2 = post_stream(server, cid, parent=second["id"], content="And then?", max_tokens=4)
    assert turn2[0]["message"]["parent"] == second["id"]


def test_bad_messages_are_4xx_and_change_nothing(server):
    cid = api(server, "POST", "/api/conversations", json={}).json()["id"]
    first = post_stream(server, cid, content="one", max_tokens=2)
    user = first[0]["message"]["id"]
    path = f"/api/conversations/{cid}/messages"
    cases = [({"parent": user, "content": "two users in a row"}, 400, "parent"),
             ({"parent": first[-2]["message"]["id"]}, 400, "parent"),  # regenerate an answer
             ({"parent": None}, 400, "parent"),
             ({"parent": "msg-missing", "content": "x"}, 404, None),
             ({"content": ""}, 400, "content"),
             ({"content": "x" * 32_001}, 400, "content"),
             ({"content": "x", "model": "nope"}, 404, "model"),
             ({"content": "x", "temperature": -1}, 400, "temperature")]
    for body, status, param in cases:
        assert_error(api(server, "POST", path, json=body), status, param=param)
    big = api(server, "POST", path, json={"content": "x" * 70_000})
    assert_error(big, 413, code="request_too_large")
    assert len(api(server, "GET", f"/api/conversations/{cid}").json()["messages"]) == 2
    assert_error(api(server, "PATCH", f"/api/conversations/{cid}", json={"leaf": "msg-x"}), 404)
    assert api(server, "GET", "/health").status_code == 200


def test_stop_cancels_the_row_and_keeps_the_partial_reply(server):
    prompt = long_greedy_prompt(server, ALICE)  # greedy: no end token for 300+ tokens
    cid = api(server, "POST", "/api/conversations", json={"temperature": 0}).json()["id"]
    url = f"{server}/api/conversations/{cid}/messages"
    with httpx.stream("POST", url, headers=as_(ALICE), json={"content": prompt},
                      timeout=120) as res:
        events = sse_events(res)
        seen = [next(events), next(events)]
        assert [e["type"] for e in seen] == ["user", "delta"]
        busy = api(server, "POST", f"/api/conversations/{cid}/messages",
                   json={"parent": seen[0]["message"]["id"]})
        assert_error(busy, 409, code="conversation_busy")
        assert api(server, "GET", f"/api/conversations/{cid}").json()["generating"] is True
        assert api(server, "POST", f"/api/conversations/{cid}/stop").status_code == 204
        rest = list(events)
    done = rest[-2] if rest[-1]["type"] == "title" else rest[-1]
    assert done["type"] == "done" and done["message"]["finish_reason"] == "cancelled"
    text = seen[1]["text"] + "".join(e["text"] for e in rest if e["type"] == "delta")
    assert done["message"]["content"] == text
    assert done["message"]["finish_reason"] == "cancelled"  # not "stop" / "length"
    stats = api(server, "GET", "/stats").json()["sft"]
    assert stats["busy_slots"] == 0 and stats["waiting"] == 0
    conv = api(server, "GET", f"/api/conversations/{cid}").json()
    assert conv["generating"] is False and conv["leaf"] == done["message"]["id"]


def test_no_key_means_loopback_only(tmp_path):
    with pytest.raises(SystemExit):
        parse([f"--workdir={tmp_path}", "--host=0.0.0.0"])
    assert parse([f"--workdir={tmp_path}", "--host=0.0.0.0", "--api-key=a,b"]).api_keys == [
        "a", "b"]
    assert parse([f"--workdir={tmp_path}"]).host == "127.0.0.1"
