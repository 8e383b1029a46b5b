"""The OpenAI-compatible server, started as `python -m gpt_jax.serve` in a subprocess on a free
loopback port (random-weight model), driven by the official `openai` client and raw HTTP:
stream vs non-stream, the SSE protocol, n / stop / seed / logprobs, 16 concurrent requests equal
to the same alone, cancellation freeing slots, 429 under overload, a prefix-cache hit on a chat's
second turn, and OpenAI-shaped 4xx errors after which the server is still healthy."""
import json
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx2 as httpx  # what the openai client itself uses
import openai
import pytest

from gpt_jax.model import GPTConfig
from gpt_jax.serve.launch import ServerProcess
from helpers import random_model_workdir

KEY = "test-key"
CONFIG = GPTConfig(family="llama", vocab_size=320, max_seq_len=192, n_layers=2, d_model=32,
                   n_heads=4, n_kv_heads=2, init_std=0.3)
QUEUE = 2


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A random sft + pretrain, and a LoRA adapter of sft saved alone (served as sft+math; every
    projection, the output head, and the chat tokens' rows)."""
    from gpt_jax import lora
    from gpt_jax.checkpoint import load_stage
    from test_lora import trained_adapter

    wd = random_model_workdir(tmp_path_factory.mktemp("serve_api"), CONFIG, ("sft", "pretrain"))
    _, params = load_stage(wd, "sft")
    adapter = trained_adapter(params, lora.LoRAConfig(
        rank=4, alpha=8.0, targets=(*lora.DEFAULT_TARGETS, "lm_head"), token_ids=tuple(range(15))),
        seed=3)
    lora.save_adapter(wd / "math.safetensors", lora.Adapter(adapter.params, adapter.config, {
        "base_stage": "sft", "base_fingerprint": lora.params_fingerprint(params)}))
    return wd


@pytest.fixture(scope="module")
def server(workdir):
    with ServerProcess(workdir, "--stages=sft,pretrain", "--slots=16", f"--max-queue={QUEUE}",
                       f"--api-key={KEY}", "--timeout=120", "--max-requests=2000",
                       f"--adapters=math={workdir / 'math.safetensors'}",
                       "--stream-interval-ms=20", timeout_s=400) as proc:
        yield proc.url


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0, timeout=120)


def chat(client, text, **kw):
    kw = {"model": "sft", "temperature": 0, "max_tokens": 24, **kw}
    return client.chat.completions.create(messages=[{"role": "user", "content": text}], **kw)


def stats(server):
    return httpx.get(f"{server}/stats", headers={"Authorization": f"Bearer {KEY}"}).json()["sft"]


def test_health_models_and_api_key(server, client):
    health = httpx.get(f"{server}/health").json()
    assert health["status"] == "ok"  # no key needed
    # loaded, the server moved its heap out of the collector's reach (no 100+ ms pauses)
    assert health["gc_frozen"] > 10_000
    r = httpx.get(f"{server}/v1/models")
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert sorted(m.id for m in client.models.list()) == ["pretrain", "sft", "sft+math"]


def test_stream_equals_non_stream_and_follows_the_protocol(server, client):
    text = "你好，世界。Hello there, how are you today?"
    whole = chat(client, text, max_tokens=40)
    body = {"model": "sft", "messages": [{"role": "user", "content": text}], "temperature": 0,
            "max_tokens": 40, "stream": True, "stream_options": {"include_usage": True}}
    lines = []
    with httpx.stream("POST", f"{server}/v1/chat/completions", json=body, timeout=60,
                      headers={"Authorization": f"Bearer {KEY}"}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [ln[len("data: "):] for ln in r.iter_lines() if ln.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    chunks = [json.loads(ln) for ln in lines[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert sum(f is not None for f in finishes) == 1 and finishes[-1] == whole.choices[0].finish_reason
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole.usage.model_dump(
        exclude_none=True) | {"prompt_tokens_details": chunks[-1]["usage"]["prompt_tokens_details"]}
    streamed = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    # equal to the whole reply, which is decoded from all its bytes at once: no delta ever
    # carried half a UTF-8 character
    assert streamed == whole.choices[0].message.content
    # the official client reads the same stream
    got = "".join(c.choices[0].delta.content or "" for c in chat(client, text, max_tokens=40,
                                                                  stream=True) if c.choices)
    assert got == streamed


def test_coalesced_streams_carry_the_whole_reply(server, client):
    """8 rows decoding (n=8, greedy: 8 equal choices) and --stream-interval-ms=20: after its first,
    a choice's chunk carries what was decoded in 20 ms; each choice's text is the whole reply."""
    text = "Hello there, how are you today?"
    whole = chat(client, text, max_tokens=40)
    body = {"model": "sft", "messages": [{"role": "user", "content": text}], "temperature": 0,
            "max_tokens": 40, "stream": True, "n": 8}
    with httpx.stream("POST", f"{server}/v1/chat/completions", json=body, timeout=60,
                      headers={"Authorization": f"Bearer {KEY}"}) as r:
        chunks = [json.loads(ln[len("data: "):]) for ln in r.iter_lines()
                  if ln.startswith("data: {")]
    for i in range(8):
        parts = [c["choices"][0]["delta"].get("content") or "" for c in chunks
                 if c["choices"] and c["choices"][0]["index"] == i]
        assert "".join(parts) == whole.choices[0].message.content


def test_streamed_choices_each_get_a_role_and_one_finish(client):
    chunks = [c for c in chat(client, "Hello world", n=3, temperature=1.0, seed=3, max_tokens=12,
                              stream=True)]
    by_index = {i: [c.choices[0] for c in chunks if c.choices and c.choices[0].index == i]
                for i in range(3)}
    whole = chat(client, "Hello world", n=3, temperature=1.0, seed=3, max_tokens=12)
    for i, parts in by_index.items():
        assert parts[0].delta.role == "assistant"
        assert sum(p.finish_reason is not None for p in parts) == 1
        assert "".join(p.delta.content or "" for p in parts) == whole.choices[i].message.content


def test_n_seed_stop_and_logprobs(client):
    kw = {"temperature": 1.0, "top_p": 0.95, "n": 3, "seed": 11, "max_tokens": 16}
    a, b = chat(client, "Hello world", **kw), chat(client, "Hello world", **kw)
    texts = [c.message.content for c in a.choices]
    assert [c.index for c in a.choices] == [0, 1, 2] and len(set(texts)) > 1
    assert texts == [c.message.content for c in b.choices]
    assert texts != [c.message.content for c in chat(client, "Hello world", **{**kw, "seed": 12}).choices]

    greedy = chat(client, "The quick brown fox", max_tokens=30, logprobs=True, top_logprobs=3)
    content = greedy.choices[0].logprobs.content
    assert len(content) == greedy.usage.completion_tokens
    for entry in content:
        tops = [t.logprob for t in entry.top_logprobs]
        assert len(tops) == 3 and tops == sorted(tops, reverse=True)
        assert entry.logprob == pytest.approx(tops[0])  # greedy picks the most likely token
    text = greedy.choices[0].message.content
    stop = text[len(text) // 2: len(text) // 2 + 2]
    cut = chat(client, "The quick brown fox", max_tokens=30, stop=[stop, "@@@"])
    assert cut.choices[0].message.content == text[: text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_16_concurrent_requests_equal_each_alone(client):
    texts = [f"Question {i}: what is {i} + {2 * i}? Tell me about the lazy dog." for i in range(16)]
    with ThreadPoolExecutor(16) as pool:
        together = list(pool.map(lambda t: chat(client, t, max_tokens=32).choices[0].message.content,
                                 texts))
    alone = [chat(client, t, max_tokens=32).choices[0].message.content for t in texts]
    assert together == alone


def test_disconnect_cancels_the_row_and_frees_its_slot(server, client):
    stream = chat(client, "Tell me a long story about the quick brown fox", max_tokens=150,
                  stream=True)
    for i, _ in enumerate(stream):
        if i == 3:
            break
    stream.close()
    deadline = time.monotonic() + 10
    while stats(server)["busy_slots"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stats(server)["busy_slots"] == 0
    steps = stats(server)["decode_steps"]
    time.sleep(0.5)
    assert stats(server)["decode_steps"] == steps  # nothing decodes for it any more


def test_overload_answers_429_with_retry_after(server, client):
    # 32 requests sent at once over connections opened beforehand (a barrier): 16 take the
    # slots, QUEUE wait, the rest arrive while those run and are refused. Without the barrier the
    # threads' requests trickled in over longer than the server took to answer the first ones.
    n = 32
    clients = [httpx.Client(base_url=server, timeout=120,
                            headers={"Authorization": f"Bearer {KEY}"}) for _ in range(n)]
    for c in clients:
        c.get("/health")
    barrier = threading.Barrier(n)

    def one(i):
        barrier.wait()
        return clients[i].post("/v1/chat/completions", json={
            "model": "sft", "temperature": 0, "max_tokens": 160,
            "messages": [{"role": "user", "content": f"Story {i}"}]})

    try:
        with ThreadPoolExecutor(n) as pool:
            answers = list(pool.map(one, range(n)))
    finally:
        for c in clients:
            c.close()
    codes = [r.status_code for r in answers]
    assert set(codes) == {200, 429} and codes.count(200) >= 16 + QUEUE
    busy = next(r for r in answers if r.status_code == 429)
    assert busy.headers["retry-after"] == "1"
    assert busy.json()["error"]["type"] == "rate_limit_exceeded"
    assert chat(client, "still there?").choices[0].finish_reason in ("stop", "length")


def test_second_chat_turn_hits_the_prefix_cache(server, client):
    first_msg = "Tell me about the quick brown fox and the lazy dog, hello world. " * 2
    turn1 = [{"role": "user", "content": first_msg}]
    r1 = client.chat.completions.create(model="sft", messages=turn1, temperature=0, max_tokens=20)
    hits = stats(server)["prefix_cache"]["hits"]
    turn2 = turn1 + [{"role": "assistant", "content": r1.choices[0].message.content},
                     {"role": "user", "content": "And then?"}]
    r2 = client.chat.completions.create(model="sft", messages=turn2, temperature=0, max_tokens=20)
    assert r2.usage.prompt_tokens_details.cached_tokens >= r1.usage.prompt_tokens // 16 * 16 >= 32
    assert stats(server)["prefix_cache"]["hits"] == hits + 1


def test_completions_endpoint(client):
    r = client.completions.create(model="pretrain", prompt=["Hello world", "12 34"], n=2,
                                  max_tokens=8, temperature=0, logprobs=2)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    assert r.choices[0].text == r.choices[1].text  # greedy: both choices alike
    lp = r.choices[2].logprobs
    assert "".join(lp.tokens) == r.choices[2].text and len(lp.top_logprobs[0]) == 2
    assert r.usage.completion_tokens == 4 * 8 or r.choices[0].finish_reason == "stop"


@pytest.mark.parametrize("body,status,param", [
    ({"max_tokens": 0}, 400, "max_tokens"),
    ({"temperature": 2.5}, 400, "temperature"),
    ({"top_p": 0}, 400, "top_p"),
    ({"n": 0}, 400, "n"),
    ({"model": "nope"}, 404, "model"),
    ({"model": "pretrain"}, 400, "model"),
    ({"max_tokens": 10_000}, 400, "max_tokens"),
    ({"messages": [{"role": "user", "content": "fox " * 400}]}, 400, "messages"),
    ({"stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, 400, "tools"),
    ({"response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "objekt"}}}}, 400, "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, 400,
     "response_format"),
    ({"response_format": {"type": "regex", "regex": "abc("}}, 400, "response_format"),
    ({"response_format": {"type": "xml"}}, 400, "response_format"),
    ({"messages": []}, 400, "messages"),
])
def test_bad_requests_get_openai_errors_and_the_server_stays_healthy(server, body, status, param):
    full = {"model": "sft", "messages": [{"role": "user", "content": "Hi"}], **body}
    r = httpx.post(f"{server}/v1/chat/completions", json=full, timeout=30,
                   headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["param"] == param
    assert httpx.get(f"{server}/health").status_code == 200


def test_malformed_json_is_a_400(server):
    r = httpx.post(f"{server}/v1/chat/completions", content=b'{"model": "sft", "messages": [',
                   headers={"Authorization": f"Bearer {KEY}", "content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


PERSON = {"type": "object", "additionalProperties": False, "required": ["name", "age"],
          "properties": {"name": {"type": "string", "maxLength": 10},
                         "age": {"type": "integer", "minimum": 0, "maximum": 120}}}


def test_response_format_json_schema_and_regex(server, client):
    import jsonschema

    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON,
                                                  "strict": True}}
    res = chat(client, "Who are you?", temperature=1.0, n=4, seed=5, max_tokens=60,
               response_format=fmt)
    for c in res.choices:
        assert c.finish_reason == "stop"
        jsonschema.validate(json.loads(c.message.content), PERSON)
    streamed = [c for c in chat(client, "Who are you?", temperature=1.0, n=4, seed=5,
                                max_tokens=60, response_format=fmt, stream=True) if c.choices]
    for i, c in enumerate(res.choices):
        text = "".join(x.choices[0].delta.content or "" for x in streamed
                       if x.choices[0].index == i)
        assert text == c.message.content
    phone = chat(client, "Your number?", temperature=1.0, max_tokens=30,
                 response_format={"type": "regex", "regex": r"\d{3}-\d{4}"})
    assert re.fullmatch(r"[0-9]{3}-[0-9]{4}", phone.choices[0].message.content)
    done = client.completions.create(model="pretrain", prompt="Answer:", max_tokens=10,
                                     temperature=1.0, extra_body={"response_format": {
                                         "type": "grammar", "grammar": 'start: "yes" | "no"'}})
    assert done.choices[0].text in ("yes", "no") and done.choices[0].finish_reason == "stop"


def test_memory_extension_adds_retrieved_context(server, client):
    from helpers import small_tokenizer

    auth = {"Authorization": f"Bearer {KEY}"}
    for text in ("My locker number is 4821.", "Lunch is at noon."):
        res = httpx.post(f"{server}/v1/memories", headers=auth,
                         json={"conversation": "c1", "text": text})
        assert res.status_code == 201 and res.json()["text"] == text
    listed = httpx.get(f"{server}/v1/memories", params={"conversation": "c1"}, headers=auth)
    assert [m["text"] for m in listed.json()["data"]] == ["My locker number is 4821.",
                                                          "Lunch is at noon."]
    question = [{"role": "user", "content": "which locker number is mine"}]
    plain = client.chat.completions.create(model="sft", messages=question, max_tokens=2,
                                           temperature=0)
    res = client.chat.completions.create(model="sft", messages=question, max_tokens=2,
                                         temperature=0, extra_body={"memory": {
                                             "conversation": "c1", "k": 2}})
    assert res.model_extra["retrieved"] == ["My locker number is 4821."]
    stream = client.chat.completions.create(model="sft", messages=question, max_tokens=2,
                                            temperature=0, stream=True, extra_body={"memory": {
                                                "conversation": "c1", "k": 2}})
    chunks = list(stream)
    assert chunks[0].model_extra["retrieved"] == ["My locker number is 4821."]  # first chunk
    assert all("retrieved" not in c.model_extra for c in chunks[1:])
    # exactly the context's tokens were added to the prompt
    tok = small_tokenizer()  # the workdir's (random_model_workdir saves this one)
    with_ctx = tok.render_for_completion([{**question[0], "context": ["My locker number is 4821."]}])
    assert res.usage.prompt_tokens - plain.usage.prompt_tokens == (
        len(with_ctx) - len(tok.render_for_completion(question)))
    nothing = client.chat.completions.create(model="sft", messages=question, max_tokens=2,
                                             extra_body={"memory": {"conversation": "other"}})
    assert nothing.model_extra["retrieved"] == []
    bad = httpx.post(f"{server}/v1/chat/completions", headers=auth, json={
        "model": "sft", "messages": question, "memory": {"k": 0}})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "memory.k"
    assert httpx.delete(f"{server}/v1/memories", params={"conversation": "c1"},
                        headers=auth).status_code == 204
    gone = client.chat.completions.create(model="sft", messages=question, max_tokens=2,
                                          extra_body={"memory": {"conversation": "c1"}})
    assert gone.model_extra["retrieved"] == []


def test_lora_adapter_per_request_on_the_shared_base(workdir, client):
    """`sft+math` answers as the merged model would, batched with plain `sft` requests on the
    same engine (one copy of the base weights)."""
    import functools

    from gpt_jax import lora
    from gpt_jax import sampling as S
    from gpt_jax.chat import _mask_from
    from gpt_jax.checkpoint import load_stage
    from gpt_jax.engine_tools import visible_text
    from gpt_jax.tokenizer import Tokenizer
    from gpt_jax.tools import toolbox

    texts = ["Hello there", "how are you today?", "12 34 56", "The quick brown fox"]
    with ThreadPoolExecutor(8) as pool:
        mixed = list(pool.map(lambda a: chat(client, a[0], model=a[1], max_tokens=16),
                              [(t, m) for t in texts for m in ("sft", "sft+math")]))
    tok = Tokenizer.load(workdir / "tokenizer" / "tokenizer.json")
    config, params = load_stage(workdir, "sft")
    merged = lora.merge(params, lora.load_adapter(workdir / "math.safetensors")).params
    stop = (tok.token_id("assistant_end"), tok.eos_id)
    for i, text in enumerate(texts):
        base, adapted = mixed[2 * i], mixed[2 * i + 1]
        assert base.model == "sft" and adapted.model == "sft+math"
        prompt = tok.render_for_completion([{"role": "user", "content": text}])
        gen = S.generate(merged, config, [prompt], S.SamplingConfig(
            temperature=0.0, max_new_tokens=16, stop_ids=stop), pad_id=tok.pad_id, tokenizer=tok,
            logit_processor=functools.partial(_mask_from, first_unused=tok.vocab_size),
            tool=toolbox(["calculator"]))
        want = visible_text(tok, gen.row(0), skip=set(stop))
        assert adapted.choices[0].message.content == want
        assert base.choices[0].message.content == chat(client, text, max_tokens=16).choices[
            0].message.content
    assert any(mixed[2 * i].choices[0].message.content != mixed[2 * i + 1].choices[0]
               .message.content for i in range(len(texts)))
    with pytest.raises(openai.NotFoundError, match="sft\\+nope"):
        chat(client, "hi", model="sft+nope")
