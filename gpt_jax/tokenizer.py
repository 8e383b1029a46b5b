"""Byte-level BPE tokenizer: HF `tokenizers` for training and the file format, tiktoken for speed.

Why two libraries: HF `tokenizers` trains a BPE in seconds and its `tokenizer.json` is the format
everyone reads, but its encoder is slow in Python loops. tiktoken runs the same BPE (merges applied
in rank order over the same regex pre-split) 3-10x faster, so bulk tokenization (the pretraining
token cache) goes through a `tiktoken.Encoding` built from the trained vocab. The two paths give
identical ids; `tests/test_tokenizer.py` checks that on every shipped text source.

Two details make the ids identical:
- the pre-tokenizer is a GPT-4-style regex split (every digit its own piece) followed by the
  byte-level mapping WITHOUT its own regex, exactly what tiktoken does with `pat_str`;
- HF byte-level vocab entries are strings over a printable alphabet (GPT-2's bytes->unicode map);
  we map them back to raw bytes to get tiktoken's `mergeable_ranks`. The HF trainer assigns ids in
  merge order, so the id is the merge rank (`_check_ranks` verifies this when loading).

Special tokens (bos/eos, chat roles, tool calls) get ids 0..N-1. `encode` never produces them from
text (user text containing "<|eos|>" stays ordinary text); the chat template inserts them by id.
"""
from __future__ import annotations

import hashlib
import json
import logging
from functools import cached_property
from pathlib import Path
from typing import Iterable, Sequence

import tiktoken
from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer

# GPT-4 (cl100k) split with every digit its own piece instead of groups of 1-3: a number's
# tokens are its digits, in English and Chinese text alike, so column arithmetic (carries) is
# learnable by a small model (Lee et al. 2023, "Teaching Arithmetic to Small Transformers";
# pairs of digits as one token left the tiny recipe at 0% on arithmetic). Possessive quantifiers
# keep HF (Oniguruma) and tiktoken (fancy-regex) in exact agreement.
SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]++[\r\n]*"""
    r"""|\s*[\r\n]|\s+(?!\S)|\s+"""
)

# name -> token string. Order fixes the ids (0..len-1).
SPECIAL_TOKENS = {
    "bos": "<|bos|>",
    "eos": "<|eos|>",
    "pad": "<|pad|>",
    "system_start": "<|system_start|>",
    "system_end": "<|system_end|>",
    "user_start": "<|user_start|>",
    "user_end": "<|user_end|>",
    "assistant_start": "<|assistant_start|>",
    "assistant_end": "<|assistant_end|>",
    "tool_call_start": "<|tool_call_start|>",
    "tool_call_end": "<|tool_call_end|>",
    "tool_result_start": "<|tool_result_start|>",
    "tool_result_end": "<|tool_result_end|>",
    "retrieval_start": "<|retrieval_start|>",
    "retrieval_end": "<|retrieval_end|>",
}
# Added after the first tokenizers were trained: a tokenizer.json without them still loads (it
# cannot render retrieved context; retrain the tokenizer stage for that).
OPTIONAL_SPECIALS = ("retrieval_start", "retrieval_end")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable unicode char map (what HF ByteLevel uses)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars)}


_UNICODE_TO_BYTE = {c: b for b, c in _bytes_to_unicode().items()}


def _new_hf_tokenizer() -> HFTokenizer:
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    return tok


def train_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> "Tokenizer":
    """Trains a byte-level BPE of `vocab_size` ids in total (specials + 256 bytes + merges)."""
    n_reserved = len(SPECIAL_TOKENS) + 256
    if vocab_size <= n_reserved:
        raise ValueError(f"vocab_size must exceed {n_reserved} (specials + 256 bytes)")
    if vocab_size > 2**32 - 1:
        raise ValueError("vocab_size must fit in uint32")
    hf = _new_hf_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    hf.train_from_iterator(texts, trainer)
    return Tokenizer(hf)


class Tokenizer:
    """A trained byte-level BPE with chat special tokens. Load with `Tokenizer.load(path)`."""

    def __init__(self, hf: HFTokenizer):
        self.hf = hf
        # Specials are inserted by id only: HF must treat "<|eos|>" in text as text, like tiktoken's
        # encode_ordinary does.
        self.hf.encode_special_tokens = True
        vocab = hf.get_vocab()
        self.special_ids = {name: vocab[tok] for name, tok in SPECIAL_TOKENS.items()
                            if tok in vocab}
        if missing := [t for n, t in SPECIAL_TOKENS.items()
                       if t not in vocab and n not in OPTIONAL_SPECIALS]:
            raise ValueError(f"tokenizer lacks special tokens {missing}")
        ranks = {
            bytes(_UNICODE_TO_BYTE[c] for c in tok): i
            for tok, i in vocab.items()
            if i not in self.special_ids.values()
        }
        self.fast_path_exact = _check_ranks(hf, vocab)
        if not self.fast_path_exact:
            logging.warning("BPE merge order != id order; encode falls back to the slow HF path")
        self._tik = tiktoken.Encoding(
            name=f"gpt_jax_{self.hash}",
            pat_str=SPLIT_PATTERN,
            mergeable_ranks=ranks,
            special_tokens={SPECIAL_TOKENS[n]: i for n, i in self.special_ids.items()},
        )
        self._id_to_name = {i: n for n, i in self.special_ids.items()}

    # -- files ------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path) -> "Tokenizer":
        return cls(HFTokenizer.from_file(str(path)))

    def save(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.hf.save(str(path))

    @cached_property
    def hash(self) -> str:
        """Stable content hash (vocab, merges, specials, pre-tokenizer): the token-cache key."""
        blob = json.loads(self.hf.to_str())
        keep = {k: blob[k] for k in ("added_tokens", "pre_tokenizer", "model", "normalizer")}
        canon = json.dumps(keep, sort_keys=True, ensure_ascii=False).encode()
        return hashlib.sha256(canon).hexdigest()[:16]

    # -- ids --------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size()

    @property
    def bos_id(self) -> int:
        return self.special_ids["bos"]

    @property
    def eos_id(self) -> int:
        return self.special_ids["eos"]

    @property
    def pad_id(self) -> int:
        return self.special_ids["pad"]

    def token_id(self, name: str) -> int:
        """Id of a special token by name ("user_start", ...)."""
        return self.special_ids[name]

    def is_special(self, token_id: int) -> bool:
        return token_id in self._id_to_name

    def special_name(self, token_id: int) -> str | None:
        return self._id_to_name.get(token_id)

    # -- encode / decode --------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Ordinary text -> ids (never special ids)."""
        if not self.fast_path_exact:
            return self.encode_hf(text)
        return self._tik.encode_ordinary(text)

    def encode_batch(self, texts: Sequence[str], num_threads: int = 2) -> list[list[int]]:
        """Bulk fast path (tiktoken, GIL released, `num_threads` threads)."""
        if not self.fast_path_exact:
            return [e.ids for e in self.hf.encode_batch(list(texts), add_special_tokens=False)]
        return self._tik.encode_ordinary_batch(list(texts), num_threads=num_threads)

    def encode_hf(self, text: str) -> list[int]:
        """Reference (slow) path through HF `tokenizers`; same ids as `encode` for ordinary text."""
        return self.hf.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int]) -> str:
        """ids -> text. Specials decode to their strings; broken UTF-8 becomes U+FFFD."""
        return self._tik.decode_bytes([int(i) for i in ids]).decode("utf-8", errors="replace")

    def token_bytes(self, token_id: int) -> bytes:
        return self._tik.decode_single_token_bytes(int(token_id))

    # -- chat (see gpt_jax/data/chat_template.py) -------------------------------------------
    def render_chat(self, messages: Sequence[dict]) -> tuple[list[int], list[int]]:
        """Conversation -> (ids, loss_mask); mask is 1 exactly on assistant tokens + their end
        (in-line tool results excluded)."""
        from gpt_jax.data import chat_template

        return chat_template.render_chat(self, messages)

    def render_for_completion(self, messages: Sequence[dict]) -> list[int]:
        """Prompt ids ending with <|assistant_start|> (a trailing assistant turn is dropped)."""
        from gpt_jax.data import chat_template

        return chat_template.render_for_completion(self, messages)

    def parse_chat(self, ids: Sequence[int]) -> list[dict]:
        """Inverse of `render_chat` (also accepts a completion cut off before its end token)."""
        from gpt_jax.data import chat_template

        return chat_template.parse_chat(self, ids)


def _check_ranks(hf: HFTokenizer, vocab: dict[str, int]) -> bool:
    """True when every merge makes a new token whose id grows with the merge's priority.

    tiktoken merges the adjacent pair whose concatenation has the lowest rank; HF applies merges by
    priority. With ids strictly increasing along the merge list the two agree (verified on data).
    """
    merges = json.loads(hf.to_str())["model"]["merges"]
    last = -1
    for m in merges:
        a, b = m if isinstance(m, list) else m.split(" ")
        i = vocab.get(a + b)
        if i is None or i <= last:
            return False
        last = i
    return True
