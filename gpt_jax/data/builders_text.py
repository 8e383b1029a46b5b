"""Pretraining text builders (record type `text`): English books, NLTK corpora, web/wiki demos,
Tiny Shakespeare, classical Chinese poetry, and generated arithmetic drills. Formats: ../shared/data/README.md."""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import tensorflow_datasets as tfds

from gpt_jax.data.builder_base import SourceBuilder
from gpt_jax.data.readers import BadRecordError, field, iter_jsonl, iter_text_lines, iter_zip_members


class TinyShakespeare(SourceBuilder):
    """Tiny Shakespeare (karpathy/char-rnn): the 40,000-line file as 40 records of 1,000 lines."""

    FILES = ("pretrain/tinyshakespeare/input.txt",)
    LINES_PER_RECORD = 1000

    def _records(self):
        path = self.file()

        def chunks():
            lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
            n = self.LINES_PER_RECORD
            return [{"text": "".join(lines[i : i + n])} for i in range(0, len(lines), n)]

        yield None, str(path), chunks


_PG_START = re.compile(
    r"\*\*\* ?START OF TH(?:IS|E) PROJECT GUTENBERG[^\n]*\n|\*END\*THE SMALL PRINT[^\n]*\n"
)
_PG_END = re.compile(r"\*\*\* ?END OF TH(?:IS|E) PROJECT GUTENBERG|\n\s*End (?:of )?(?:the )?Project Gutenberg")


def gutenberg_body(text: str) -> str:
    """The book between the Project Gutenberg header and footer, with \\n line ends."""
    text = text.replace("\r\n", "\n")
    start = m.end() if (m := _PG_START.search(text)) else 0
    end = m.start() if (m := _PG_END.search(text, start)) else len(text)
    return text[start:end].strip() + "\n"


class GutenbergEn(SourceBuilder):
    """214 English Project Gutenberg books (header and license footer cut off)."""

    FILES = tuple(f"pretrain/gutenberg_en/gutenberg_en_0{i}.jsonl.gz" for i in range(4))

    def _records(self):
        for i in range(len(self.FILES)):
            for loc, thunk in iter_jsonl(self.file(i)):
                yield None, loc, (lambda t=thunk: {"text": gutenberg_body(field(t(), "text"))})


def _decode_legacy(data: bytes) -> str:
    """NLTK files are UTF-8, except a few State of the Union / inaugural texts in Latin-1."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _brown_text(data: bytes) -> str:
    """POS-tagged Brown text (`The/at jury/nn`) -> plain words, one sentence per line."""
    lines = []
    for line in _decode_legacy(data).splitlines():
        if line.strip():
            lines.append(" ".join(tok.rsplit("/", 1)[0] for tok in line.split()))
    if not lines:
        raise BadRecordError("empty Brown sample")
    return "\n".join(lines) + "\n"


def _play_text(data: bytes) -> str:
    """Shakespeare XML -> "SPEAKER:\\nline\\n..." blocks (the Tiny Shakespeare layout)."""
    root = ET.fromstring(data)
    blocks = []
    for speech in root.iter("SPEECH"):
        speaker = " & ".join(s.text or "" for s in speech.findall("SPEAKER"))
        lines = ["".join(line.itertext()) for line in speech.findall("LINE")]
        blocks.append(f"{speaker}:\n" + "\n".join(lines))
    if not blocks:
        raise BadRecordError("play has no SPEECH elements")
    return "\n\n".join(blocks) + "\n"


class NltkEn(SourceBuilder):
    """NLTK English corpora: Brown (500), movie reviews (2,000), State of the Union (65),
    inaugural addresses (59), Genesis KJV + WEB (2), 8 Shakespeare plays: 2,634 documents."""

    CORPORA = {
        "brown": (r"brown/c[a-r]\d\d$", _brown_text),
        "movie_reviews": (r"movie_reviews/(neg|pos)/.+\.txt$", _decode_legacy),
        "state_union": (r"state_union/.+\.txt$", _decode_legacy),
        "inaugural": (r"inaugural/.+\.txt$", _decode_legacy),
        "genesis": (r"genesis/english-(kjv|web)\.txt$", _decode_legacy),
        "shakespeare": (r"shakespeare/.+\.xml$", _play_text),
    }
    FILES = tuple(f"pretrain/nltk_corpora/{name}.zip" for name in CORPORA)

    def _records(self):
        for i, (name, (pattern, to_text)) in enumerate(self.CORPORA.items()):
            members = iter_zip_members(self.file(i), lambda n, p=pattern: re.search(p, n) is not None)
            for loc, thunk in members:
                yield None, loc, (lambda t=thunk, f=to_text, s=name: {"text": f(t()), "source": s})


class WebDemoEn(SourceBuilder):
    """Small web and Wikipedia samples: C4 (300 docs) + Wikipedia (30 articles)."""

    FILES = ("pretrain/llamafactory_demo/c4_demo.jsonl", "pretrain/llamafactory_demo/wiki_demo.txt")

    def _records(self):
        for loc, thunk in iter_jsonl(self.file(0)):
            yield None, loc, (lambda t=thunk: {"text": field(t(), "text"), "source": "c4_demo"})
        for loc, thunk in iter_text_lines(self.file(1)):
            yield None, loc, (lambda t=thunk: {"text": t(), "source": "wiki_demo"})


_FIRST_KEYS = ("title", "rhythmic", "chapter", "section", "author")
_SKIP_KEYS = ("source", "id")


def poem_text(obj) -> str:
    """Joins all strings of a (possibly nested) poetry record: heading fields first, then body."""
    out: list[str] = []

    def walk(x):
        if isinstance(x, str):
            if x.strip():
                out.append(x.strip())
        elif isinstance(x, list):
            for y in x:
                walk(y)
        elif isinstance(x, dict):
            keys = [k for k in _FIRST_KEYS if k in x] + [k for k in x if k not in _FIRST_KEYS]
            for k in keys:
                if k not in _SKIP_KEYS:
                    walk(x[k])
        elif x is not None and not isinstance(x, (int, float, bool)):
            raise BadRecordError(f"unexpected value of type {type(x).__name__}")

    if not isinstance(obj, dict):
        raise BadRecordError("expected an object")
    walk(obj)
    if not out:
        raise BadRecordError("record has no text")
    return "\n".join(out) + "\n"


class ChinesePoetry(SourceBuilder):
    """Classical Chinese poetry and classics (chinese-poetry/chinese-poetry): Tang shi 57,607,
    Song shi 50,002, Song ci 21,053, Yuan qu 11,057, classics 1,641 = 141,360 records."""

    FILES = tuple(
        f"pretrain/chinese_poetry/{n}.jsonl.gz"
        for n in ("tang_shi", "song_shi_first50k", "song_ci", "yuan_qu", "classics")
    )

    def _records(self):
        for i in range(len(self.FILES)):
            name = self.FILES[i].rsplit("/", 1)[1].split(".")[0]
            for loc, thunk in iter_jsonl(self.file(i)):
                yield None, loc, (lambda t=thunk, s=name: {"text": poem_text(t()), "source": s})


class ArithmeticDrills(SourceBuilder):
    """Synthetic arithmetic drills (worked sums and equations, gpt_jax/tasks/drills.py): no file, a pure
    function of the seed; "train" never uses an operand pair held out for evaluation, "heldout"
    only those. Bump VERSION when the drill generator changes (it is the cache key)."""

    VERSION = tfds.core.Version("3.0.0")
    RELEASE_NOTES = {"1.0.0": "Plain equations.", "2.0.0": "Worked column-method blocks.",
                     "3.0.0": "One kind per document; no times tables."}
    TRAIN_DOCS = 4000  # x 48 lines: ~2.5M tokens, more than any tiny preset reads
    HELDOUT_DOCS = 250  # >= 5% of the records, as every builder's held-out split

    def _records(self):
        from gpt_jax.tasks.drills import drill_documents

        for split, n in (("train", self.TRAIN_DOCS), ("heldout", self.HELDOUT_DOCS)):
            for k, text in enumerate(drill_documents(split, n, seed=0)):
                yield split, f"drills/{split}:{k}", (lambda t=text: {"text": t})
