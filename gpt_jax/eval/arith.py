"""One arithmetic evaluation for every policy: accuracy per level x mode, pass@k, format validity.

Every policy (base few-shot, SFT, PPO, FeedME, ...) answers the SAME held-out problems:
- greedy accuracy on `n_per_level` problems of each level (L1/L2/L3), asked in each mode: `direct`,
  `cot`, `calc` (the calculator runs inside decoding) and `calc_off` (the calc prompt decoded with
  no tool attached: the model must write each result itself);
- pass@k for k in `pass_k` at temperature 1 over `pass_k_samples` samples of each of
  `pass_k_problems` problems (levels in turn) asked in `pass_k_mode`, with the unbiased estimator
  1 - C(n - c, k) / C(n, k) (Chen et al. 2021); none with `pass_k_problems` 0;
- `format_valid`: the share of greedy answers (direct/cot/calc) whose text has its mode's shape
  (`format_ok`); a calc answer must also have called the tool.

Sampling keys are per row: each sample's key folds in a row id made from the problem's id and the
sample's index (`row_id`), so a draw never depends on batch size or position, and two policies are
asked with the same keys. The base model gets a few-shot completion prompt (solved TRAIN problems in
the same mode), the chat models the task's chat prompt.
"""
from __future__ import annotations

import functools
import hashlib
import math
import re
from typing import Any

import ml_collections
import numpy as np

from gpt_jax import labeler
from gpt_jax.seq_utils import equal_chunks, fit_prompt
from gpt_jax.tasks.arithmetic import LEVELS, ArithmeticTask

EVAL_MODES = ("direct", "cot", "calc", "calc_off")
BASE_STOP_STRINGS = ("\n\n", "\nQuestion:")
# "a op b = c." or a column step with its carry/borrow, "4 + 3 + 1 = 8." / "9 - 1 - 5 = 3."
_EQUATION = re.compile(r"^-?\d+( [-+*/] \d+)+ = (-?\d+\.|\?)$")  # a step, or its question line
_ANSWER = re.compile(r"^The answer is -?\d+\.$")


def eval_config(**overrides) -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict({
        "n_per_level": 200,        # greedy problems per level (the same for every mode)
        "pass_k": "1,2,4,8",
        "pass_k_problems": 100,
        "pass_k_samples": 8,       # samples per problem (>= the largest k)
        "pass_k_mode": "cot",
        "temperature": 1.0,
        "max_new_tokens": 64,      # cap: each set gets min(cap, 2x its longest reference reply)
        "few_shot": 2,             # solved problems in the base model's prompt
        "seed": 0,
        "gen_batch": 32,           # rows per generate() call (CPU: 32 beat 64 and 256, docs/benchmarks.md)
    })
    cfg.update(overrides)
    return cfg


def row_id(problem_id: str, sample: int = 0) -> int:
    """A 31-bit id of (problem, sample index): the row's sampling key, whatever the batch."""
    return int(hashlib.sha256(f"{problem_id}#{sample}".encode()).hexdigest()[:8], 16) >> 1


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct."""
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def format_ok(problem, text: str, used_tool: bool) -> bool:
    """Whether a reply has the shape its mode asks for (answer correctness aside)."""
    lines = text.strip().split("\n")
    if not lines or not _ANSWER.match(lines[-1]):
        return False
    if problem.mode == "direct":
        return len(lines) == 1
    steps_ok = len(lines) >= 2 and all(_EQUATION.match(ln) for ln in lines[:-1])
    return steps_ok and (used_tool or problem.mode != "calc")


# -- decoding replies --------------------------------------------------------------------------
def visible_text(tokenizer, ids) -> tuple[str, bool]:
    """(reply text, whether it called the tool) of generated ids: a tool call reads as its
    expression and its result as " = result", so a calculator reply reads like chain of thought;
    other special tokens are dropped."""
    sid = tokenizer.special_ids
    out, used = [], False
    text_ids: list[int] = []

    def flush():
        if text_ids:
            out.append(tokenizer.decode(text_ids))
            text_ids.clear()

    for t in ids:
        t = int(t)
        if not tokenizer.is_special(t):
            text_ids.append(t)
            continue
        flush()
        if t == sid["tool_call_start"]:
            used = True
        elif t == sid["tool_result_start"]:
            out.append(" = ")
    flush()
    return "".join(out), used


def demo_reply_ids(tokenizer, problem) -> list[int]:
    """The demonstration reply of `problem` as ids (tool calls and results as special tokens)."""
    from gpt_jax.data.chat_template import assistant_ids

    return assistant_ids(tokenizer, ArithmeticTask.reply_content(problem))


def base_prompt_ids(tokenizer, demos, problem, room: int) -> list[int]:
    """eos + solved demonstrations ("Question: q\\nAnswer: reply\\n\\n") + "Question: q\\nAnswer:",
    dropping the oldest demonstrations until it fits in `room` tokens."""
    demos = list(demos)
    while True:
        ids = [tokenizer.eos_id]
        for d in demos:
            ids += tokenizer.encode(f"Question: {d.question}\nAnswer: ")
            ids += demo_reply_ids(tokenizer, d) + tokenizer.encode("\n\n")
        ids += tokenizer.encode(f"Question: {problem.question}\nAnswer:")
        if len(ids) <= room or not demos:
            return ids[-room:]
        demos = demos[1:]


@functools.lru_cache(maxsize=8)
def break_ids(tokenizer, text: str) -> tuple[int, ...]:
    """Ids of the tokens whose text holds `text` (the base model's first stop string, a blank
    line: a token of it ends the reply, whatever else it holds)."""
    return tuple(i for i in range(tokenizer.vocab_size)
                 if tokenizer.special_name(i) is None and text in tokenizer.decode([i]))


def chat_prompt_ids(tokenizer, problem, room: int) -> list[int]:
    ids = tokenizer.render_for_completion(ArithmeticTask.prompt_messages(problem))
    return fit_prompt(ids, room)


# -- one policy --------------------------------------------------------------------------------
class PolicyEval:
    """Answers problems with one model: `answer(problems, ...) -> [(text, used_tool, ids, logps)]`
    (ids without the stop token; log-probs of the tokens the model wrote, not the tool's)."""

    def __init__(self, name: str, model_config, params, tokenizer, demos_by_mode, c):
        from gpt_jax.tools.calculator import calculate

        self.name, self.model_config, self.params, self.tok = name, model_config, params, tokenizer
        self.demos, self.c, self.calculate = demos_by_mode, c, calculate
        self.room = model_config.max_seq_len - int(c.max_new_tokens)

    def prompts(self, problems) -> list[list[int]]:
        if self.name == "base":
            return [base_prompt_ids(self.tok, self.demos[p.mode], p, self.room) for p in problems]
        return [chat_prompt_ids(self.tok, p, self.room) for p in problems]

    def answer(self, problems, *, tool: bool, temperature: float, samples: int = 1,
               max_new_tokens: int | None = None):
        from gpt_jax.sampling import SamplingConfig, generate
        from gpt_jax.train.sft import vocab_limit_processor

        tok, c = self.tok, self.c
        drop = (tok.eos_id,) if self.name == "base" else (tok.token_id("assistant_end"),
                                                          tok.eos_id)
        # The base model's reply ends at a blank line (truncated there afterwards); a row stops
        # decoding at the first token holding one, so a chunk ends with its longest answer,
        # not at the budget. Those tokens stay in `ids` (the truncation keeps them too).
        stop_ids = drop + (break_ids(tok, BASE_STOP_STRINGS[0]) if self.name == "base" else ())
        stops = BASE_STOP_STRINGS if self.name == "base" else ()
        processor = (vocab_limit_processor(tok.vocab_size)
                     if self.model_config.vocab_size > tok.vocab_size else None)
        prompts = [q for q in self.prompts(problems) for _ in range(samples)]
        rows = [row_id(p.id, s) for p in problems for s in range(samples)]
        n_new = int(c.max_new_tokens if max_new_tokens is None else max_new_tokens)
        sampling = SamplingConfig(temperature=temperature, max_new_tokens=n_new,
                                  stop_ids=stop_ids, stop_strings=stops, seed=int(c.seed))
        out = []
        for part in equal_chunks(len(prompts), int(c.gen_batch)):
            gen = generate(self.params, self.model_config, prompts[part], sampling,
                           logit_processor=processor, pad_id=tok.pad_id, tokenizer=tok,
                           row_ids=rows[part], tool=self.calculate if tool else None)
            for i in range(len(prompts[part])):
                ids = [t for t in gen.row(i) if t not in drop]
                text, used = visible_text(tok, ids)
                if stops:
                    hits = [text.find(s) for s in stops if s in text]
                    text = text[:min(hits)] if hits else text
                n = gen.lengths[i]
                keep = (np.ones(n, bool) if gen.tool_mask is None
                        else ~gen.tool_mask[i, :n].astype(bool))
                out.append((text.strip(), used, ids, np.asarray(gen.logprobs[i, :n])[keep]))
        return out


def reply_budget(tokenizer, problems, cap: int) -> int:
    """New tokens a set of problems gets: twice its longest reference reply, at most `cap`. A
    longer reply is past the gold rubric's length penalty anyway, and the rows that never stop
    (the base model's, babbling ones) then cost 2x the reference instead of `cap`: the direct
    mode's references are ~12 tokens, L2 chains of thought up to ~125. Rounded up to a multiple
    of 16 so that few decode lengths are compiled."""
    longest = max((len(demo_reply_ids(tokenizer, p)) for p in problems), default=0)
    return max(1, min(int(cap), -(-2 * longest // 16) * 16))


def evaluate(policy: PolicyEval, sets: dict[str, list], c) -> dict[str, Any]:
    """The policy's accuracy table, pass@k and format validity on the shared held-out sets."""
    accuracy, examples, valid = {}, {}, []
    greedy_cot, cot_lengths = [], []
    for level in LEVELS:
        accuracy[level] = {}
        for mode in EVAL_MODES:
            asked = [ArithmeticTask.with_mode(p, "calc" if mode == "calc_off" else mode)
                     for p in sets[level]]
            answers = policy.answer(asked, tool=mode == "calc", temperature=0.0,
                                    max_new_tokens=reply_budget(policy.tok, asked,
                                                                c.max_new_tokens))
            right = [labeler.is_correct(p, a[0]) for p, a in zip(asked, answers)]
            accuracy[level][mode] = float(np.mean(right))
            if mode != "calc_off":
                valid += [format_ok(p, a[0], a[1]) for p, a in zip(asked, answers)]
            if mode == "cot":
                greedy_cot += [(p, a[0]) for p, a in zip(asked, answers)]
                cot_lengths += [len(a[2]) for a in answers]
            examples[f"{level}/{mode}"] = {"question": asked[0].question, "reply": answers[0][0],
                                          "correct": right[0]}
    ks = [int(k) for k in str(c.pass_k).split(",")] if int(c.pass_k_problems) > 0 else []
    n = int(c.pass_k_samples)
    if ks and max(ks) > n:
        raise ValueError(f"pass_k={c.pass_k} needs pass_k_samples >= {max(ks)}, got {n}")
    pool = [p for trio in zip(*(sets[lv] for lv in LEVELS)) for p in trio]
    asked = [ArithmeticTask.with_mode(p, c.pass_k_mode) for p in pool[:int(c.pass_k_problems)]]
    samples = [] if not asked else policy.answer(
        asked, tool=c.pass_k_mode == "calc", temperature=float(c.temperature), samples=n,
        max_new_tokens=reply_budget(policy.tok, asked, c.max_new_tokens))
    correct = [sum(labeler.is_correct(p, s[0]) for s in samples[i * n:(i + 1) * n])
               for i, p in enumerate(asked)]
    logps = np.concatenate([s[3] for s in samples]) if samples else np.zeros(0)
    return {
        "accuracy": accuracy,
        "pass_at_k": {str(k): float(np.mean([pass_at_k(n, ci, k) for ci in correct])) for k in ks},
        "format_valid": float(np.mean(valid)),
        "examples": examples,
        "sample_ids": [s[2] for s in samples],
        "sample_entropy": float(-logps.mean()) if logps.size else 0.0,
        "greedy_cot": greedy_cot,
        "cot_lengths": cot_lengths,
    }
