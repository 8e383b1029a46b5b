"""Arithmetic word problems in three levels, answered in one of three modes chosen by the system
prompt: the task on which the tiny recipe shows what SFT, chain of thought, tools and RL each add.

Levels (what the arithmetic asks of the model):
- L1: one addition or subtraction on 1-2-digit numbers ("Mia has 23 marbles. She buys 45 more.");
- L2: two such operations in a row (the running value may reach 3 digits);
- L3: arithmetic a small model cannot do in its head: 3-digit x 2-digit products ("12 boxes of
  345 coins") or sums of two 3-digit numbers.

Modes (the system prompt, `SYSTEM_PROMPTS`, says which; the reply always ends "The answer is N."):
- direct: "The answer is 68." (all arithmetic in the head, no written steps);
- cot:    one equation per line, then the answer (chain of thought): each operation starts with
          its question line "47 + 38 = ?" (the drills' worked block, `worked_lines`: the
          pretraining drills teach exactly this text), then each addition or
          subtraction is worked by the column method, one single-digit fact per line with the
          carry or borrow written out ("7 + 8 = 15.", "4 + 3 + 1 = 8."), then the whole
          equation "47 + 38 = 85." (`column_lines`); a product is one line;
- calc:   each operation computed by the calculator tool: the reply is a list of content parts
          (gpt_jax/data/chat_template.py): a `tool_call` "47 + 38", the `tool_result` "85" that
          the decode engine inserts, then ".\n"; its visible text is "47 + 38 = 85." per
          operation, then the answer.
`calc_off`, the ablation, is the calc prompt decoded with no tool attached (an engine setting, not
a mode of the data).

Held-out problems differ in arithmetic AND phrasing:
- an operand pair (op, a, b) is held out when sha256 of it falls in the first `HELDOUT_PERCENT`%
  (`pair_is_heldout`); a problem is held out when any of its steps uses a held-out pair, and a
  train problem uses none. The pretraining drills (gpt_jax/tasks/drills.py) skip held-out pairs
  too, so a held-out computation never appears in any training data;
- `*_HELD` templates (start, operation, question phrasing) are used only by held-out problems (on
  about half of them), so some phrasings are never trained on.
"""
from __future__ import annotations

import dataclasses
import hashlib
import random

from gpt_jax.tasks.base import Problem

HELDOUT_PERCENT = 10
LEVELS = ("L1", "L2", "L3")
MODES = ("direct", "cot", "calc")
SYSTEM_PROMPTS = {
    "direct": "Answer with the final number only.",
    "cot": "Solve it step by step: one equation per line.",
    "calc": "Use the calculator for every step.",
}

NAMES = [("Mia", "She"), ("Tom", "He"), ("Ava", "She"), ("Leo", "He"), ("Zoe", "She"),
         ("Sam", "He"), ("Ivy", "She"), ("Max", "He"), ("Eva", "She"), ("Ben", "He")]
ITEMS = ["apples", "marbles", "books", "coins", "stickers", "pencils", "cards", "shells"]
START = ["{name} has {a} {item}."]
START_HELD = ["{name} starts out with {a} {item}."]
ADD = ["{p} buys {n} more.", "{p} finds {n} more.", "{p} gets {n} more."]
ADD_HELD = ["{p} is given {n} more.", "{p} picks up {n} more."]
SUB = ["{p} gives away {n}.", "{p} loses {n}.", "{p} sells {n}."]
SUB_HELD = ["{p} drops {n}.", "{p} trades away {n}."]
QUESTION = ["How many {item} does {name} have now?"]
QUESTION_HELD = ["How many {item} does {name} end up with?"]
MUL = ["{name} has {b} boxes with {a} {item} in each box. How many {item} does {name} have?"]
MUL_HELD = ["Each of {name}'s {b} bags holds {a} {item}. How many {item} are there in all?"]


def pair_is_heldout(op: str, a: int, b: int) -> bool:
    """Whether the computation `a op b` is reserved for evaluation (never in any training data)."""
    h = int(hashlib.sha256(f"{op}|{a}|{b}".encode()).hexdigest()[:8], 16)
    return h % 100 < HELDOUT_PERCENT


def apply_op(op: str, a: int, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def parse_weights(spec: str, known: tuple[str, ...], what: str) -> dict[str, float]:
    """"L1:0.4,L2:0.6" (or "L1,L2" for equal weights) -> {name: weight}, names checked."""
    out = {}
    for item in (s.strip() for s in spec.split(",") if s.strip()):
        name, _, weight = item.partition(":")
        if name not in known:
            raise ValueError(f"{what}: unknown {name!r} in {spec!r}; known: {list(known)}")
        out[name] = float(weight) if weight else 1.0
    if not out or sum(out.values()) <= 0:
        raise ValueError(f"{what}={spec!r} has no positive weight")
    return out


def column_lines(op: str, a: int, b: int) -> list[str]:
    """The written column method for `a op b` (+ or -, a >= b for -), one equation per line, units
    first, then the whole equation: 47 + 38 -> ["7 + 8 = 15.", "4 + 3 + 1 = 8.", "47 + 38 = 85."];
    93 - 58 -> ["13 - 8 = 5.", "9 - 1 - 5 = 3.", "93 - 58 = 35."].

    Each line is a single-digit fact (with the carry or borrow written out), which a small model
    learns from drills, where a whole multi-digit sum in one step is out of its reach; a column
    with one digit and nothing carried is brought down without a line. Products (L3) stay one
    line: that is what the calculator is for."""
    if op not in "+-" or (a < 10 and b < 10):
        return [f"{a} {op} {b} = {apply_op(op, a, b)}."]
    lines, carry, x, y = [], 0, a, b
    while x or y:
        da, db = x % 10, y % 10
        has_b = y > 0
        if op == "+":
            terms = [str(da)] * (x > 0) + [str(db)] * has_b + ["1"] * carry
            total = da + db + carry
            if len(terms) > 1:
                lines.append(f"{' + '.join(terms)} = {total}.")
            carry = total // 10
        else:
            top = da - carry
            if not has_b and not carry:
                pass  # brought down
            elif top < db:
                terms = [f"1{da}"] + ["1"] * carry + [str(db)] * has_b
                lines.append(f"{' - '.join(terms)} = {10 + top - db}.")
                carry = 1
            else:
                terms = [str(da)] + ["1"] * carry + [str(db)] * has_b
                lines.append(f"{' - '.join(terms)} = {top - db}.")
                carry = 0
        x, y = x // 10, y // 10
    return lines + [f"{a} {op} {b} = {apply_op(op, a, b)}."]


def worked_lines(op: str, a: int, b: int) -> list[str]:
    """One operation of the chain of thought, exactly as the pretraining drills write it: the
    question line "47 + 38 = ?" (the operands copied from the problem), then `column_lines`."""
    return [f"{a} {op} {b} = ?", *column_lines(op, a, b)]


def _steps_of(start: int, steps: tuple) -> list[tuple[str, int, int, int]]:
    """[(op, a, b, result)] of a start value and its (op, n) steps."""
    out, value = [], start
    for op, n in steps:
        new = apply_op(op, value, n)
        out.append((op, value, n, new))
        value = new
    return out


@dataclasses.dataclass(frozen=True)
class ArithmeticTask:
    levels: str = "L1:0.4,L2:0.35,L3:0.25"  # level mixture of `problems(level=None)`
    modes: str = "direct:0.25,cot:0.4,calc:0.35"  # mode mixture of `problems(mode=None)`
    name: str = "arithmetic"

    def __post_init__(self):
        parse_weights(self.levels, LEVELS, "levels")
        parse_weights(self.modes, MODES, "modes")

    # -- drawing the arithmetic ---------------------------------------------------------------
    @staticmethod
    def _draw(level: str, rng: random.Random) -> tuple[int, tuple]:
        if level == "L3":
            a = rng.randint(100, 999)
            if rng.random() < 0.5:
                return a, (("*", rng.randint(10, 99)),)
            return a, (("+", rng.randint(100, 999)),)
        value = start = rng.randint(1, 99)
        steps = []
        for _ in range(1 if level == "L1" else 2):
            n = rng.randint(1, 99)
            op = "-" if n <= value and rng.random() < 0.5 else "+"
            steps.append((op, n))
            value = apply_op(op, value, n)
        return start, tuple(steps)

    @staticmethod
    def split_of(start: int, steps: tuple) -> str:
        held = any(pair_is_heldout(op, a, b) for op, a, b, _ in _steps_of(start, steps))
        return "heldout" if held else "train"

    # -- rendering ----------------------------------------------------------------------------
    def render(self, level: str, start: int, steps: tuple, rng: random.Random,
               held_phrasing: bool) -> Problem:
        name, pron = rng.choice(NAMES)
        item = rng.choice(ITEMS)
        pick = lambda train, held: rng.choice(held if held_phrasing else train)  # noqa: E731
        if steps[0][0] == "*":
            question = pick(MUL, MUL_HELD).format(name=name, a=start, b=steps[0][1], item=item)
        else:
            sentences = [pick(START, START_HELD).format(name=name, a=start, item=item)]
            for k, (op, n) in enumerate(steps):
                text = pick(ADD, ADD_HELD) if op == "+" else pick(SUB, SUB_HELD)
                text = text.format(p=pron, n=n)
                if k and rng.random() < 0.5:
                    text = f"Then {pron.lower()}{text[len(pron):]}"
                sentences.append(text)
            sentences.append(pick(QUESTION, QUESTION_HELD).format(item=item, name=name))
            question = " ".join(sentences)
        chain = _steps_of(start, steps)
        answer = chain[-1][3]
        solution = "\n".join([ln for op, a, b, _ in chain for ln in worked_lines(op, a, b)]
                             + [f"The answer is {answer}."])
        key = f"{start}|" + "|".join(f"{op}{n}" for op, n in steps)
        return Problem(id=f"arith-{hashlib.sha256(key.encode()).hexdigest()[:12]}",
                       question=question, answer=str(answer), solution=solution,
                       source=self.name, level=level, chain=solution,
                       equations="\n".join(f"{a} {op} {b} = {c}." for op, a, b, c in chain))

    def problems(self, split: str, n: int, seed: int = 0, level: str | None = None,
                 mode: str | None = None) -> list[Problem]:
        """`n` distinct problems of `split` ("train" | "heldout"), a pure function of the arguments.

        level / mode None: drawn per problem from the `levels` / `modes` mixtures. The arithmetic
        and phrasing of the k-th problem do not depend on `mode`, so `with_mode` of one draw gives
        the same questions in every mode (paired comparisons)."""
        if split not in ("train", "heldout"):
            raise ValueError(f"split={split!r}; expected 'train' or 'heldout'")
        if level is not None and level not in LEVELS:
            raise ValueError(f"level={level!r}; expected one of {LEVELS}")
        levels = parse_weights(self.levels, LEVELS, "levels")
        modes = parse_weights(self.modes, MODES, "modes")
        rng = random.Random(f"{self.name}:{split}:{seed}:{level}")
        mode_rng = random.Random(f"{self.name}:{split}:{seed}:{level}:modes")
        out, seen, tries = [], set(), 0
        while len(out) < n:
            tries += 1
            if tries > 200 * n + 10_000:
                raise ValueError(f"cannot draw {n} distinct {split} problems with {self}")
            lev = level or rng.choices(list(levels), list(levels.values()))[0]
            start, steps = self._draw(lev, rng)
            if (start, steps) in seen or self.split_of(start, steps) != split:
                continue
            seen.add((start, steps))
            held_phrasing = split == "heldout" and rng.random() < 0.5
            problem = self.render(lev, start, steps, rng, held_phrasing)
            m = mode or mode_rng.choices(list(modes), list(modes.values()))[0]
            out.append(self.with_mode(problem, m))
        return out

    @staticmethod
    def with_mode(problem: Problem, mode: str) -> Problem:
        """The same problem asked in `mode` ("direct" | "cot" | "calc"); its solution (the visible
        reply text) follows the mode, its id gets the mode as a suffix."""
        if mode not in MODES:
            raise ValueError(f"mode={mode!r}; expected one of {MODES}")
        base_id = problem.id.split(":")[0]
        chain = problem.chain or problem.solution
        final = chain.splitlines()[-1]
        reply = {"direct": final, "cot": chain, "calc": f"{problem.equations}\n{final}"}[mode]
        return dataclasses.replace(problem, id=f"{base_id}:{mode}", mode=mode, solution=reply,
                                   chain=chain)

    # -- chat ---------------------------------------------------------------------------------
    @staticmethod
    def prompt_messages(problem: Problem) -> list[dict]:
        """[system (the mode's instruction), user question]; no system message without a mode."""
        user = [{"role": "user", "content": problem.question}]
        if not problem.mode:
            return user
        return [{"role": "system", "content": SYSTEM_PROMPTS[problem.mode]}] + user

    @classmethod
    def reply_content(cls, problem: Problem):
        """The assistant reply: text, or for calc the content parts with tool calls and results."""
        if problem.mode != "calc":
            return problem.solution
        lines = problem.solution.splitlines()
        parts = []
        for line in lines[:-1]:
            expr, result = line.rstrip(".").split(" = ")
            parts += [{"type": "tool_call", "text": expr}, {"type": "tool_result", "text": result},
                      {"type": "text", "text": ".\n"}]
        parts[-1] = {"type": "text", "text": ".\n" + lines[-1]}
        return parts

    @classmethod
    def demonstration(cls, problem: Problem) -> list[dict]:
        return cls.prompt_messages(problem) + [
            {"role": "assistant", "content": cls.reply_content(problem)}]
