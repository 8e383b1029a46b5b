"""All dataset builders by name, and the one way to get a prepared one and read its records.

`prepare(name, data_dir=..., cache_dir=...)` builds the TFDS array_record files once under
`<cache_dir>/tfds/<fingerprint>/` (the fingerprint covers the source files' sha256 and the
bad-record policy, so a changed source file is rebuilt, never silently reused) and returns the
builder; `read_records(builder, split)` yields plain record dicts (gpt_jax/data/records.py).
"""
from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Iterator

import tensorflow_datasets as tfds

from gpt_jax import paths
from gpt_jax.data import builders_eval, builders_ranking, builders_sft, builders_text, records
from gpt_jax.data.builder_base import SourceBuilder
from gpt_jax.progress import progress_mode

_CLASSES = [
    builders_text.TinyShakespeare, builders_text.GutenbergEn, builders_text.NltkEn,
    builders_text.WebDemoEn, builders_text.ChinesePoetry, builders_text.ArithmeticDrills,
    builders_sft.Lima, builders_sft.AlpacaEnDemo, builders_sft.AlpacaZhDemo,
    builders_sft.OasstSftZh, builders_sft.CodeAlpaca, builders_sft.Gpteacher,
    builders_sft.AlpacaSeedTasks, builders_sft.SharegptZh, builders_sft.Identity,
    builders_ranking.HhRlhfHarmlessTest, builders_ranking.OasstEnTrees, builders_ranking.DpoEnDemo,
    builders_ranking.DpoZhDemo, builders_ranking.MedicalgptDpoZh, builders_ranking.OaastRmZh,
    builders_eval.Gsm8k, builders_eval.Mmlu,
]
BUILDERS: dict[str, type[SourceBuilder]] = {cls.name: cls for cls in _CLASSES}

# Record counts stated in ../shared/data/README.md (tests assert the builders reproduce them).
EXPECTED_COUNTS = {
    "tiny_shakespeare": 40,  # 40,000 lines in records of 1,000
    "gutenberg_en": 214,
    "nltk_en": 500 + 2000 + 65 + 59 + 2 + 8,
    "web_demo_en": 300 + 30,
    "chinese_poetry": 57_607 + 50_002 + 21_053 + 11_057 + 1_641,
    "arithmetic_drills": 4000 + 250,  # generated, not shipped
    "lima": 1029,
    "alpaca_en_demo": 999,
    "alpaca_zh_demo": 1000,
    "oasst_sft_zh": 689,
    "code_alpaca": 2017,
    "gpteacher": 4535 + 1923,
    "alpaca_seed_tasks": 175,
    "sharegpt_zh": 1000,
    "identity": 91,
    "hh_rlhf_harmless_test": 2312,
    "oasst_en_trees": 212,
    "dpo_en_demo": 300,
    "dpo_zh_demo": 300,
    "medicalgpt_dpo_zh": 500,
    "oaast_rm_zh": 775,
    "gsm8k": 7473 + 1319,
    "mmlu": 285 + 1531 + 14_042,
}


def names(record_type: str | None = None) -> list[str]:
    return [n for n, c in BUILDERS.items() if record_type in (None, c.RECORD_TYPE)]


@functools.lru_cache(maxsize=None)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def source_fingerprint(name: str, data_dir: str | Path | None = None) -> str:
    """sha256 over the builder's version and its source files' contents (16 hex chars)."""
    cls = BUILDERS[name]
    root = paths.resolve_data_dir(str(data_dir) if data_dir else None)
    h = hashlib.sha256(f"{name}:{cls.VERSION}".encode())
    for rel in cls.FILES:
        p = root / rel
        if not p.is_file():
            raise FileNotFoundError(f"{name}: missing source file {p}")
        st = p.stat()
        h.update(f"{rel}:{_file_sha256(str(p), st.st_size, st.st_mtime_ns)}".encode())
    return h.hexdigest()[:16]


def prepare(
    name: str,
    *,
    data_dir: str | Path | None,
    cache_dir: str | Path,
    skip_bad_records: bool = False,
    identity: tuple[str, str] | None = None,
) -> SourceBuilder:
    """The named builder, prepared (built once, then reused) under `cache_dir`."""
    if name not in BUILDERS:
        raise KeyError(f"unknown dataset {name!r}; known: {sorted(BUILDERS)}")
    root = paths.resolve_data_dir(str(data_dir) if data_dir else None)
    key = f"{source_fingerprint(name, root)}{'-skip' if skip_bad_records else ''}"
    kwargs = {}
    if identity is not None:
        cfg = builders_sft.IdentityConfig(assistant_name=identity[0], author=identity[1])
        # The default values are a predefined config; TFDS wants those named, not re-created.
        kwargs["config"] = cfg.name if cfg.name in BUILDERS[name].builder_configs else cfg
    builder = BUILDERS[name](
        source_dir=root,
        skip_bad_records=skip_bad_records,
        data_dir=str(Path(cache_dir) / "tfds" / key),
        **kwargs,
    )
    if progress_mode() != "bar":  # TFDS's own tqdm bars: carriage returns in CI and pipe logs
        tfds.disable_progress_bar()
    builder.download_and_prepare()
    return builder


def read_records(builder: SourceBuilder, split: str, batch: int = 512) -> Iterator[dict]:
    """Plain record dicts of one split, in stored order."""
    source = builder.as_data_source()[split]
    for start in range(0, len(source), batch):
        idx = list(range(start, min(start + batch, len(source))))
        for raw in source.__getitems__(idx):
            yield records.decode(builder.RECORD_TYPE, raw)
