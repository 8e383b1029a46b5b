"""metrics.jsonl after a kill: a torn last line is dropped, a corrupt middle line names file:line,
and truncating on resume leaves no row past the restored step and no torn row."""
import json

import pytest

from gpt_jax.metrics import read_metrics, truncate_jsonl


def _write(path, rows, tail=""):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + tail)


def test_torn_last_line_is_dropped(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"step": s, "loss": 1.0 / s} for s in range(1, 4)]
    _write(path, rows, tail='{"step": 4, "lo')
    assert read_metrics(path) == rows


def test_corrupt_middle_line_names_file_and_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2, oops\n{"step": 3}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not a JSON row"):
        read_metrics(path)
    path.write_text('{"step": 1}\n{"step": 2, oops\n')  # complete (newline-ended): not a tear
    with pytest.raises(ValueError, match=r"metrics.jsonl:2"):
        read_metrics(path)


def test_truncate_on_resume_drops_later_and_torn_rows(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"step": s, "loss": float(s)} for s in range(1, 8)]
    _write(path, rows, tail='{"step": 8, "loss": 8.')
    truncate_jsonl(path, 5)
    text = path.read_text()
    assert text.endswith("\n")
    assert [json.loads(line)["step"] for line in text.splitlines()] == [1, 2, 3, 4, 5]
    truncate_jsonl(path, 0)
    assert path.read_text() == ""
