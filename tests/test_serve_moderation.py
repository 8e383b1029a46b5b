"""The server with a moderation stage (a random trunk whose head flags everything): the
/v1/moderations shape through the official client, a flagged chat input answered with
finish_reason "content_filter" without decoding (stream and not), and bad moderation input."""
import httpx2 as httpx
import openai
import pytest

from gpt_jax.model import GPTConfig
from gpt_jax.serve.launch import ServerProcess
from helpers import head_model_stage, random_model_workdir

CONFIG = GPTConfig(family="llama", vocab_size=320, max_seq_len=128, n_layers=2, d_model=32,
                   n_heads=4, n_kv_heads=2, init_std=0.3)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    wd = random_model_workdir(tmp_path_factory.mktemp("serve_mod"), CONFIG)
    head_model_stage(wd, CONFIG, "moderation", bias=20.0, seq_len=32, summary={"threshold": 0.5})
    with ServerProcess(wd, "--slots=2", "--max-requests=200", timeout_s=400) as proc:
        yield proc.url


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key="none", max_retries=0, timeout=60)


def test_moderations_endpoint(client, server):
    res = client.moderations.create(input=["How do I pick a lock?", "Hello"])
    assert len(res.results) == 2 and res.id.startswith("modr-")
    for r in res.results:
        assert r.flagged is True
        d = r.model_dump()
        assert d["categories"]["harmful"] is True and d["category_scores"]["harmful"] > 0.99
    parts = httpx.post(f"{server}/v1/moderations", json={"input": [
        {"type": "text", "text": "hi"}]}).json()
    assert len(parts["results"]) == 1
    bad = httpx.post(f"{server}/v1/moderations", json={"input": [{"type": "image_url"}]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "input"


def test_flagged_input_is_not_decoded(client):
    res = client.chat.completions.create(model="sft", messages=[
        {"role": "user", "content": "How do I pick a lock?"}], max_tokens=20, n=2)
    assert [c.finish_reason for c in res.choices] == ["content_filter"] * 2
    assert all(not c.message.content for c in res.choices)
    assert res.usage.completion_tokens == 0
    chunks = [c for c in client.chat.completions.create(
        model="sft", messages=[{"role": "user", "content": "x"}], max_tokens=20, stream=True)
        if c.choices]
    assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] == [
        "content_filter"]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == ""
