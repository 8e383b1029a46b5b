"""Progress output: a bar only on a TTY; otherwise one plain line per log step, no '\\r'."""
import io
import sys

import pytest

from gpt_jax import progress as progress_mod
from gpt_jax.progress import LineProgress, progress, progress_mode


class _Stream(io.StringIO):
    def __init__(self, tty):
        super().__init__()
        self._tty = tty

    def isatty(self):
        return self._tty


def test_mode_follows_the_tty_and_the_env_var(monkeypatch):
    monkeypatch.delenv("GPT_JAX_PROGRESS", raising=False)
    monkeypatch.setattr(sys, "stderr", _Stream(True))
    assert progress_mode() == "bar"
    monkeypatch.setattr(sys, "stderr", _Stream(False))
    assert progress_mode() == "lines"
    monkeypatch.setenv("GPT_JAX_PROGRESS", "bar")
    assert progress_mode() == "bar"
    monkeypatch.setenv("GPT_JAX_PROGRESS", "nope")
    with pytest.raises(ValueError):
        progress_mode()


def test_lines_mode_prints_one_line_per_postfix(monkeypatch):
    monkeypatch.delenv("GPT_JAX_PROGRESS", raising=False)
    err = _Stream(False)
    monkeypatch.setattr(sys, "stderr", err)
    bar = progress(range(2, 6), initial=2, total=6, desc="train")
    assert isinstance(bar, LineProgress)
    for i in bar:
        if (i + 1) % 2 == 0:
            bar.set_postfix(loss=f"{1.0 / (i + 1):.4f}")
    bar.close()
    text = err.getvalue()
    assert "\r" not in text
    assert text.splitlines() == ["train step 4/6 loss=0.2500", "train step 6/6 loss=0.1667"]
    monkeypatch.setenv("GPT_JAX_PROGRESS", "off")
    err.truncate(0)
    bar = progress(range(3), total=3, desc="x")
    for _ in bar:
        bar.set_postfix(a=1)
    assert err.getvalue() == ""
    assert progress(range(3), total=3, enabled=False).quiet
    assert progress_mod.MODES == ("bar", "lines", "off")
