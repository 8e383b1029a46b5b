"""The shared TFDS builder: reads shipped files in place, normalizes, splits, writes array_record.

Each concrete builder (gpt_jax/data/builders_*.py) only says which files it reads and how one raw
record becomes one normalized record (gpt_jax/data/records.py). This base class does the rest:

- error policy: a record whose thunk raises becomes `BadRecordError("<file>:<line>: <why>")`, or,
  with `skip_bad_records=True`, is counted, logged, and listed in `info.metadata`
  (`skipped_records`, `skipped_examples`); a builder that yields zero records always fails;
- splits: sources with their own splits (GSM8K train/test, MMLU dev/val/test) keep them; all other
  records are split deterministically by the sha256 of their id: the first ceil(5%) go to
  `heldout`, the rest to `train` (stable under reordering, and held-out is never below 5%);
- storage: `file_format="array_record"` (no TensorFlow), read back with `as_data_source()`.
"""
from __future__ import annotations

import hashlib
import logging
import math
import re
from pathlib import Path
from typing import Iterator

import tensorflow_datasets as tfds

from gpt_jax.data import records
from gpt_jax.data.readers import BadRecordError, Thunk

HELDOUT_FRACTION = 0.05
_CATCH = (BadRecordError, KeyError, TypeError, ValueError, AttributeError, IndexError)


class SourceBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base class; subclasses set RECORD_TYPE and FILES, and READER + `_convert` or `_records`."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First normalized release."}
    RECORD_TYPE = "text"
    FILES: tuple[str, ...] = ()  # relative to the data dir
    # Nothing is downloaded, so there is no checksums file to look up next to the code; TFDS's
    # lookup would otherwise need the `importlib_resources` backport.
    code_path = None

    def __init__(self, *, source_dir: str | Path, skip_bad_records: bool = False, **kwargs):
        self.source_dir = Path(source_dir)
        self.skip_bad_records = skip_bad_records
        kwargs.setdefault("file_format", "array_record")
        super().__init__(**kwargs)

    # -- what subclasses provide ---------------------------------------------------------------
    # Either READER (a readers.iter_* function: path -> (location, thunk of a raw record)) plus
    # `_convert(raw) -> record`, applied to every file in FILES; or their own `_records`.
    READER = None

    def _records(self) -> Iterator[tuple[str | None, str, Thunk]]:
        """Yields (split or None, location, thunk). The thunk returns a record dict (or a list of
        them); it may set "source", else the file's relative path is used."""
        if self.READER is None:
            raise NotImplementedError(f"{type(self).__name__} sets neither READER nor _records")
        for i in range(len(self.FILES)):
            for loc, thunk in self.READER(self.file(i)):
                yield None, loc, (lambda t=thunk: self._convert(t()))

    # -- helpers for subclasses -------------------------------------------------------------------
    def file(self, index: int = 0) -> Path:
        path = self.source_dir / self.FILES[index]
        if not path.is_file():
            raise FileNotFoundError(f"{self.name}: missing source file {path}")
        return path

    # -- TFDS hooks ---------------------------------------------------------------------------------
    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=(self.__doc__ or "").strip(),
            features=records.features(self.RECORD_TYPE),
            metadata=tfds.core.MetadataDict(),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # files are read in place
        by_split = self._collect()
        return {split: self._generate_examples(items) for split, items in by_split.items()}

    def _generate_examples(self, items):
        yield from enumerate(items)

    # -- the guarded read ----------------------------------------------------------------------------
    def _collect(self) -> dict[str, list[dict]]:
        fixed: dict[str, list[dict]] = {}
        unsplit: list[dict] = []
        skipped: list[str] = []
        for split, loc, thunk in self._records():
            try:
                out = thunk()
                recs = out if isinstance(out, list) else [out]
                recs = [self._finish(rec, loc, k if isinstance(out, list) else None)
                        for k, rec in enumerate(recs)]
            except _CATCH as e:
                msg = f"{loc}: {e}"
                if not self.skip_bad_records:
                    raise BadRecordError(msg) from e
                skipped.append(msg)
                logging.warning("%s: skipping bad record %s", self.name, msg)
                continue
            (fixed.setdefault(split, []) if split else unsplit).extend(recs)
        n = len(unsplit) + sum(map(len, fixed.values()))
        if n == 0:
            raise BadRecordError(f"{self.name}: the source files yielded zero records")
        by_split = dict(fixed)
        if unsplit:
            by_split.update(_hash_split(unsplit))
        if skipped:
            logging.warning("%s: skipped %d bad records", self.name, len(skipped))
        self.info.metadata.update(
            num_records=n,
            skipped_records=len(skipped),
            skipped_examples=skipped[:20],
            source_files=list(self.FILES),
        )
        return by_split

    def _finish(self, rec: dict, loc: str, k: int | None) -> dict:
        rel = loc.replace(f"{self.source_dir}/", "", 1)
        rec = dict(rec)
        rec["id"] = rel if k is None else f"{rel}#{k}"
        rec.setdefault("source", re.split(r"[:\[!]", rel, maxsplit=1)[0])
        return rec


def _hash_split(recs: list[dict]) -> dict[str, list[dict]]:
    """First ceil(5%) records by sha256(id) -> heldout; both splits keep file order."""
    if len(recs) == 1:
        return {"train": recs}
    n_held = max(1, math.ceil(HELDOUT_FRACTION * len(recs)))
    order = sorted(range(len(recs)), key=lambda i: hashlib.sha256(recs[i]["id"].encode()).digest())
    held = set(order[:n_held])
    return {
        "train": [r for i, r in enumerate(recs) if i not in held],
        "heldout": [r for i, r in enumerate(recs) if i in held],
    }
