"""Every TFDS builder reproduces the shipped README's record counts; splits are deterministic with
>= 5% held out; bad input raises with its location or is counted when skipping is allowed."""
import gzip
import json
import shutil

import pytest

from gpt_jax.data import registry
from gpt_jax.data.readers import BadRecordError

SLOW = {"chinese_poetry"}  # ~25 s to build and read back


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    # Shared with tests/test_tokenizer_sources.py within one session (same base temp dir).
    return tmp_path_factory.getbasetemp() / "shared_data_cache"


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in registry.BUILDERS],
)
def test_builder_counts_match_readme(name, data_dir, cache):
    builder = registry.prepare(name, data_dir=data_dir, cache_dir=cache)
    splits = {s: v.num_examples for s, v in builder.info.splits.items()}
    assert sum(splits.values()) == registry.EXPECTED_COUNTS[name]
    assert builder.info.metadata["skipped_records"] == 0
    if set(splits) == {"train", "heldout"}:
        assert splits["heldout"] >= 0.05 * sum(splits.values())
    first = next(registry.read_records(builder, next(iter(splits))))
    assert first["id"] and first["source"]
    # Same shape for every record of the type.
    kind = builder.RECORD_TYPE
    keys = {"text": "text", "conversation": "messages", "ranking": "responses",
            "problem": "answer", "multiple_choice": "choices"}[kind]
    assert keys in first


def test_records_are_normalized(data_dir, cache):
    lima = list(registry.read_records(registry.prepare("lima", data_dir=data_dir, cache_dir=cache), "train"))
    multi = [r for r in lima if len(r["messages"]) > 2]
    assert 0 < len(multi) <= 29
    assert all(m["role"] in ("user", "assistant") for r in lima for m in r["messages"])
    gsm = registry.prepare("gsm8k", data_dir=data_dir, cache_dir=cache)
    first = next(registry.read_records(gsm, "train"))
    assert first["answer"] == "72" and "####" in first["solution"]
    mmlu = next(registry.read_records(registry.prepare("mmlu", data_dir=data_dir, cache_dir=cache), "dev"))
    assert len(mmlu["choices"]) == 4 and mmlu["answer"] in range(4)
    trees = list(registry.read_records(registry.prepare("oasst_en_trees", data_dir=data_dir, cache_dir=cache), "train"))
    assert all(t["prompt"][-1]["role"] == "user" and len(t["responses"]) >= 2 for t in trees)


def test_identity_placeholders_filled_from_config(data_dir, cache):
    b = registry.prepare("identity", data_dir=data_dir, cache_dir=cache, identity=("Nova", "ACME Lab"))
    texts = [m["content"] for s in ("train", "heldout") for r in registry.read_records(b, s) for m in r["messages"]]
    joined = "\n".join(texts)
    assert "{{" not in joined and "Nova" in joined and "ACME Lab" in joined


def test_splits_are_deterministic(data_dir, tmp_path):
    a = registry.prepare("alpaca_zh_demo", data_dir=data_dir, cache_dir=tmp_path / "a")
    b = registry.prepare("alpaca_zh_demo", data_dir=data_dir, cache_dir=tmp_path / "b")
    ids = lambda x: [r["id"] for r in registry.read_records(x, "heldout")]  # noqa: E731
    assert ids(a) == ids(b) and len(ids(a)) == 50


def test_building_writes_no_progress_bars_outside_a_terminal(data_dir, tmp_path, capfd,
                                                             monkeypatch):
    monkeypatch.setenv("GPT_JAX_PROGRESS", "lines")
    registry.prepare("alpaca_zh_demo", data_dir=data_dir, cache_dir=tmp_path)
    err = capfd.readouterr().err
    assert "\r" not in err and "examples/s" not in err, err[-300:]


# -- bad input --------------------------------------------------------------------------------
def _fake_data_dir(tmp_path, rel, content: bytes):
    root = tmp_path / "data"
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return root


def test_missing_field_names_file_and_index(tmp_path):
    rows = [{"instruction": f"q{i}", "input": "", "output": f"a{i}", "history": []} for i in range(30)]
    del rows[7]["output"]
    root = _fake_data_dir(tmp_path, "sft/lima/lima.json", json.dumps(rows).encode())
    with pytest.raises(BadRecordError, match=r"lima\.json\[7\]: missing field 'output'"):
        registry.prepare("lima", data_dir=root, cache_dir=tmp_path / "c")
    b = registry.prepare("lima", data_dir=root, cache_dir=tmp_path / "c", skip_bad_records=True)
    assert b.info.metadata["skipped_records"] == 1
    assert "lima.json[7]" in b.info.metadata["skipped_examples"][0]
    assert sum(s.num_examples for s in b.info.splits.values()) == 29


def test_malformed_json_line_names_file_and_line(tmp_path):
    good = json.dumps({"question": "1+1?", "answer": "1+1=2\n#### 2"})
    content = "\n".join([good, "{not json", good, json.dumps({"question": "no answer"})]) + "\n"
    root = _fake_data_dir(tmp_path, "math/gsm8k/train.jsonl", content.encode())
    (root / "math/gsm8k/test.jsonl").write_text(good + "\n")
    with pytest.raises(BadRecordError, match=r"train\.jsonl:2: malformed JSON"):
        registry.prepare("gsm8k", data_dir=root, cache_dir=tmp_path / "c")
    b = registry.prepare("gsm8k", data_dir=root, cache_dir=tmp_path / "c", skip_bad_records=True)
    assert b.info.metadata["skipped_records"] == 2  # line 2 (syntax) and line 4 (missing field)
    assert any("train.jsonl:4: missing field 'answer'" in m for m in b.info.metadata["skipped_examples"])
    assert b.info.splits["train"].num_examples == 2


def test_zero_records_is_an_error(tmp_path):
    root = _fake_data_dir(tmp_path, "pretrain/llamafactory_demo/c4_demo.jsonl", b"\n")
    (root / "pretrain/llamafactory_demo/wiki_demo.txt").write_text("")
    with pytest.raises(BadRecordError, match="zero records"):
        registry.prepare("web_demo_en", data_dir=root, cache_dir=tmp_path / "c")


def test_changed_source_is_rebuilt_not_reused(tmp_path, data_dir):
    rel = "preference/hh_rlhf/harmless-base/test.jsonl.gz"
    root = tmp_path / "data"
    (root / rel).parent.mkdir(parents=True)
    shutil.copy(data_dir / rel, root / rel)
    b1 = registry.prepare("hh_rlhf_harmless_test", data_dir=root, cache_dir=tmp_path / "c")
    lines = gzip.open(root / rel, "rt").read().splitlines()[:100]
    with gzip.open(root / rel, "wt") as f:
        f.write("\n".join(lines) + "\n")
    b2 = registry.prepare("hh_rlhf_harmless_test", data_dir=root, cache_dir=tmp_path / "c")
    assert sum(s.num_examples for s in b1.info.splits.values()) == 2312
    assert sum(s.num_examples for s in b2.info.splits.values()) == 100
