"""Chat CLI: a piped two-turn conversation end to end, context trimming, commands, completion mode."""
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gpt_jax import chat
from gpt_jax.checkpoint import Checkpointer
from gpt_jax.model import GPT, GPTConfig
from gpt_jax.sampling import SamplingConfig
from gpt_jax.tokenizer import train_bpe

REPO = Path(__file__).resolve().parents[1]
TEXT = ("The quick brown fox jumps over the lazy dog. A stitch in time saves nine. "
        "Hello world, hello there; how are you today? Numbers 12 34 56 78 and more words.\n")
# Model vocab larger than the tokenizer's: the session must mask the unused ids.
CONFIG = GPTConfig(family="gpt2", vocab_size=320, max_seq_len=96, n_layers=2, d_model=32,
                   n_heads=4, init_std=0.3)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    wd = tmp_path_factory.mktemp("run")
    train_bpe([TEXT * 3], vocab_size=300, min_frequency=1).save(wd / "tokenizer" / "tokenizer.json")
    shapes = jax.eval_shape(GPT(CONFIG).init, jax.random.key(0), jnp.zeros((1, 1), jnp.int32))
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: rng.normal(0, 0.3, s.shape).astype(np.float32),
                          nn.unbox(shapes["params"]))
    for stage in ("sft", "pretrain"):
        (wd / stage).mkdir()
        (wd / stage / "config.json").write_text(json.dumps({"model": dataclasses.asdict(CONFIG)}))
        ckpt = Checkpointer(wd / stage / "checkpoints", async_save=False)
        ckpt.save(1, {"params": params}, wait=True)
        ckpt.close()
    return wd


def session(workdir, stage="sft", **sampling):
    notices = []
    cfg = SamplingConfig(**{"temperature": 0.0, "max_new_tokens": 8, **sampling})
    return chat.load_session(str(workdir), stage, cfg, notice=notices.append), notices


def test_cli_answers_a_piped_two_turn_conversation(workdir):
    proc = subprocess.run(
        [sys.executable, "-m", "gpt_jax.chat", f"--workdir={workdir}", "--stage=sft",
         "--temperature=0", "--max_new_tokens=8"],
        input="Hello there\nHow are you today?\n", capture_output=True, text=True, cwd=REPO,
        env={**os.environ, "JAX_PLATFORMS": "cpu"}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    # The same conversation in-process: the second reply is conditioned on the first turn.
    s, _ = session(workdir)
    first, second = s.respond("Hello there"), s.respond("How are you today?")
    assert proc.stdout == f"{first}\n{second}\n"
    assert [m["role"] for m in s.history] == ["user", "assistant"] * 2
    assert all(t < 300 for t in s.prompt_ids("x"))


def test_context_full_drops_oldest_turns_and_says_so(workdir, monkeypatch):
    s, notices = session(workdir, max_new_tokens=24)
    sent = []
    stream = chat.streaming.stream

    def spy(params, config, ids, cfg, **kw):
        sent.append(len(ids) + cfg.max_new_tokens)
        return stream(params, config, ids, cfg, **kw)

    monkeypatch.setattr(chat.streaming, "stream", spy)
    long = "hello there how are you today " * 3  # ~25 tokens with the template
    for _ in range(3):
        assert s.respond(long) is not None
    assert any("context full: dropped" in n for n in notices)
    assert max(sent) <= CONFIG.max_seq_len  # every prompt + reply fit the context
    assert s.history[-1]["role"] == "assistant" and len(s.history) < 6
    notices.clear()
    assert s.respond("fox " * 200) is None and "message too long" in notices[0]


def test_commands(workdir):
    s, notices = session(workdir)
    s.respond("Hello")
    assert s.command("/system Be brief.") and s.system == "Be brief."
    assert s.tok.token_id("system_start") in s.prompt_ids("hi")
    assert s.command("/temp 0.5") and s.sampling.temperature == 0.5
    assert s.command("/reset") and s.history == []
    assert s.command("/bogus") and "unknown command" in notices[-1]
    assert not s.command("/quit")


def test_completion_mode_for_the_base_model(workdir):
    s, _ = session(workdir, stage="pretrain")
    assert s.mode == "completion"
    assert s.prompt_ids("Hello") == [s.tok.eos_id, *s.tok.encode("Hello")]
    pieces = []
    reply = s.respond("The quick brown", on_text=pieces.append)
    assert "".join(pieces) == reply and s.history == []


def test_calculator_runs_inside_the_reply(workdir):
    from gpt_jax.tools.calculator import calculate

    notices = []
    cfg = SamplingConfig(temperature=0.0, max_new_tokens=16)
    s = chat.load_session(str(workdir), "sft", cfg, notice=notices.append, tool=calculate)
    t = s.tok.special_ids
    forced = [t["tool_call_start"], *s.tok.encode("12*3"), t["tool_call_end"]]
    inserted = [t["tool_result_start"], *s.tok.encode("36"), t["tool_result_end"]]
    table = jnp.asarray(forced + [-1] * len(inserted) + [t["assistant_end"]] + [-1] * 16)

    def force(logits, state):  # the call, then (after the inserted result) the end of the turn
        want = table[jnp.clip(state.step, 0, table.shape[0] - 1)]  # step: [B] with a tool
        hit = jnp.where(jnp.arange(logits.shape[-1])[None] == want[:, None], 0.0, -1e9)
        return jnp.where((want >= 0)[:, None], hit, logits)

    s.processor = force
    pieces = []
    reply = s.respond("What is 12*3?", on_text=pieces.append)
    assert reply == "".join(pieces) == "12*3 = 36"
    assert notices == ["[calc] 12*3 -> 36"]
    assert s.history[-1] == {"role": "assistant", "content": [
        {"type": "tool_call", "text": "12*3"}, {"type": "tool_result", "text": "36"}]}
    # The next prompt re-renders the call and its result exactly as the model produced them.
    ids = s.prompt_ids("thanks")
    assert forced + inserted + [t["assistant_end"]] == ids[ids.index(forced[0]):][:len(
        forced + inserted) + 1]
    with pytest.raises(ValueError, match="chat mode"):
        chat.load_session(str(workdir), "pretrain", cfg, tool=calculate)


def test_python_tool_runs_inside_the_reply(workdir):
    from gpt_jax.tools import toolbox

    notices = []
    cfg = SamplingConfig(temperature=0.0, max_new_tokens=40)
    s = chat.load_session(str(workdir), "sft", cfg, notice=notices.append,
                          tool=toolbox(["calculator", "python"]))
    t = s.tok.special_ids
    forced = [t["tool_call_start"], *s.tok.encode("python:print(12*3)"), t["tool_call_end"]]
    inserted = [t["tool_result_start"], *s.tok.encode("36"), t["tool_result_end"]]
    table = jnp.asarray(forced + [-1] * len(inserted) + [t["assistant_end"]] + [-1] * 40)

    def force(logits, state):
        want = table[jnp.clip(state.step, 0, table.shape[0] - 1)]
        hit = jnp.where(jnp.arange(logits.shape[-1])[None] == want[:, None], 0.0, -1e9)
        return jnp.where((want >= 0)[:, None], hit, logits)

    s.processor = force
    assert s.respond("What is 12*3?") == "python:print(12*3) = 36"
    assert notices == ["[tool] python:print(12*3) -> 36"]


def test_memory_sends_hits_as_context_and_the_cli_indexes_documents(workdir, tmp_path):
    from gpt_jax.data.chat_template import parse_chat
    from gpt_jax.memory.recall import Recall
    from gpt_jax.memory.store import MemoryStore

    store = MemoryStore(tmp_path / "memory.sqlite")
    notices = []
    s = chat.load_session(str(workdir), "sft", SamplingConfig(temperature=0.0, max_new_tokens=4),
                          notice=notices.append, memory=Recall(store, k=2))
    assert s.command("/remember My locker number is 4821.")
    assert s.command("/remember Lunch is at noon.") and notices[-1] == "[remembered]"
    s.respond("which locker number is mine")
    assert notices[-1] == "[memory: 1 hit(s)]"
    user = s.history[0]
    assert user == {"role": "user", "content": "which locker number is mine",
                    "context": ["My locker number is 4821."]}
    # the next prompt carries the earlier turn's context, as the model saw it
    turns = parse_chat(s.tok, s.prompt_ids("thanks")[:-1])
    assert turns[0] == user and turns[-1] == {"role": "user", "content": "thanks"}
    s.respond("zebra")  # nothing relevant: no context at all
    assert notices[-1] == "[memory: 0 hit(s)]" and "context" not in s.history[-2]
    assert s.command("/forget") and Recall(store).hits("locker number") == []
    plain, plain_notices = session(workdir)
    plain.command("/remember x")
    assert plain_notices[-1] == "[no memory: start with --memory]"
    with pytest.raises(ValueError, match="chat mode"):
        chat.load_session(str(workdir), "pretrain", SamplingConfig(), memory=Recall(store))
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "notes.txt").write_text("The boiler room key hangs behind door 7.")
    proc = subprocess.run(
        [sys.executable, "-m", "gpt_jax.chat", f"--workdir={workdir}", "--stage=sft",
         "--temperature=0", "--max_new_tokens=4", f"--documents={docs}"],
        input="where is the boiler room key\n", capture_output=True, text=True, cwd=REPO,
        env={**os.environ, "JAX_PLATFORMS": "cpu"}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "[memory: 1 chunks from 1 file(s)]" in proc.stderr
    assert "[memory: 1 hit(s)]" in proc.stderr
