"""Reading raw source files with error locations: every record comes with "file:line" or
"file[index]", so a malformed line or a missing field is reported where it is.

Readers yield `(location, thunk)`: calling the thunk parses the raw record (and may raise). The
builder calls thunks inside a guard that turns any parse/field error into a `BadRecordError`
naming the location, or counts and skips it when `skip_bad_records=True`.
"""
from __future__ import annotations

import gzip
import json
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterator

Thunk = Callable[[], Any]


class BadRecordError(ValueError):
    """A source record that cannot be normalized; the message starts with its location."""


def _open_text(path: Path):
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def iter_jsonl(path: Path) -> Iterator[tuple[str, Thunk]]:
    """One JSON object per line (gzip by suffix). Blank lines are skipped."""
    with _open_text(path) as f:
        for lineno, line in enumerate(f, start=1):
            if line.strip():
                yield f"{path}:{lineno}", (lambda s=line: _loads(s))


def iter_json_list(path: Path) -> Iterator[tuple[str, Thunk]]:
    """A JSON file holding one list of records; a syntax error names the file's line."""
    with _open_text(path) as f:
        try:
            items = json.load(f)
        except json.JSONDecodeError as e:
            raise BadRecordError(f"{path}:{e.lineno}: malformed JSON: {e.msg}") from e
    if not isinstance(items, list):
        raise BadRecordError(f"{path}: expected a JSON list, got {type(items).__name__}")
    for i, item in enumerate(items):
        yield f"{path}[{i}]", (lambda x=item: x)


def iter_text_lines(path: Path) -> Iterator[tuple[str, Thunk]]:
    """Plain text, one record per non-empty line."""
    with _open_text(path) as f:
        for lineno, line in enumerate(f, start=1):
            if line.strip():
                yield f"{path}:{lineno}", (lambda s=line.rstrip("\n"): s)


def iter_zip_members(path: Path, accept: Callable[[str], bool]) -> Iterator[tuple[str, Thunk]]:
    """Members of a zip archive whose name passes `accept` (in archive order), as raw bytes."""
    with zipfile.ZipFile(path) as z:
        names = [n for n in z.namelist() if not n.endswith("/") and accept(n)]
        for name in names:
            yield f"{path}!{name}", (lambda data=z.read(name): data)


def _loads(line: str) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        raise BadRecordError(f"malformed JSON: {e.msg} (column {e.colno})") from e


def field(obj: Any, key: str, kind: type | tuple[type, ...] = str) -> Any:
    """obj[key] checked for presence and type; raises BadRecordError naming the field."""
    if not isinstance(obj, dict):
        raise BadRecordError(f"expected an object, got {type(obj).__name__}")
    if key not in obj:
        raise BadRecordError(f"missing field {key!r}")
    value = obj[key]
    if not isinstance(value, kind):
        raise BadRecordError(f"field {key!r} has type {type(value).__name__}")
    return value
