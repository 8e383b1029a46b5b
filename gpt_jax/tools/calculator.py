"""A safe integer calculator for in-reply tool calls: `calculate("23 + 45") == "68"`.

Why: arithmetic is what small language models get wrong, and a calculator call inside the reply
(see `gpt_jax.data.chat_template` and `gpt_jax.engine_tools`) fixes it. The expression comes from
the model, i.e. it is untrusted text, so it is never given to Python's `eval`: `simpleeval` walks
the parsed AST with only the node handlers and operators we allow here.

Language: integer literals, `+ - * /`, parentheses and unary minus/plus; nothing else (no names,
calls, attributes, float literals, `**`, `//`, `%`). Arithmetic is exact (`fractions.Fraction`),
so `/` never loses precision mid-expression. Limits: at most `MAX_CHARS` characters and every
literal, intermediate and final value within +-`MAX_ABS`.

Output: an exact integer prints as an integer ("84 / 4" -> "21"); any other value prints as a
decimal rounded half-even to 6 places with trailing zeros dropped ("10 / 4" -> "2.5",
"1 / 3" -> "0.333333"), or, if that would read 0, with 6 significant digits ("1 / 3000000" ->
"3.33333e-7"). Every failure is returned as a string starting with "error: " (it becomes the tool
result the model reads); `calculate` never raises.
"""
from __future__ import annotations

import ast
import decimal
import operator
import re
from fractions import Fraction

import simpleeval

MAX_CHARS = 64
MAX_ABS = 10**12
_ALLOWED_CHARS = re.compile(r"[0-9+\-*/() ]*")


class CalcError(Exception):
    """A user-facing reason the expression was refused (the text after "error: ")."""


def _checked(x: Fraction) -> Fraction:
    if abs(x) > MAX_ABS:
        raise CalcError(f"result out of range (|x| > {MAX_ABS:.0e})")
    return x


def _div(a: Fraction, b: Fraction) -> Fraction:
    if b == 0:
        raise CalcError("division by zero")
    return _checked(Fraction(a) / Fraction(b))


def _binary(op):
    return lambda a, b: _checked(op(Fraction(a), Fraction(b)))


def _constant(node: ast.Constant) -> Fraction:
    value = node.value
    if type(value) is not int:  # bool, float, complex, str, bytes, None, Ellipsis
        raise CalcError(f"only integer literals are allowed, got {value!r}")
    return _checked(Fraction(value))


def _evaluator() -> simpleeval.SimpleEval:
    ev = simpleeval.SimpleEval(
        operators={ast.Add: _binary(operator.add), ast.Sub: _binary(operator.sub),
                   ast.Mult: _binary(operator.mul), ast.Div: _div,
                   ast.USub: lambda a: _checked(-Fraction(a)), ast.UAdd: Fraction},
        functions={}, names={})
    # Only these AST nodes have handlers; anything else raises FeatureNotAvailable.
    ev.nodes = {ast.Expr: ev._eval_expr, ast.BinOp: ev._eval_binop,
                ast.UnaryOp: ev._eval_unaryop, ast.Constant: _constant}
    return ev


def format_value(x: Fraction) -> str:
    """Exact integers as integers, other values as a rounded decimal (see the module docstring)."""
    if x.denominator == 1:
        return str(x.numerator)
    with decimal.localcontext() as ctx:
        ctx.prec = 40
        d = decimal.Decimal(x.numerator) / decimal.Decimal(x.denominator)
        q = d.quantize(decimal.Decimal("1e-6"), rounding=decimal.ROUND_HALF_EVEN)
        if q == 0:
            return f"{d:.6g}".replace("e-0", "e-")
        text = format(q, "f").rstrip("0").rstrip(".")
        return "0" if text in ("-0", "") else text


def evaluate(expr: str) -> Fraction:
    """The exact value of `expr`; raises CalcError with a readable reason."""
    if not isinstance(expr, str):
        raise CalcError("expression must be a string")
    if len(expr) > MAX_CHARS:
        raise CalcError(f"expression longer than {MAX_CHARS} characters")
    if not expr.strip():
        raise CalcError("empty expression")
    if not _ALLOWED_CHARS.fullmatch(expr):
        bad = sorted({c for c in expr if not _ALLOWED_CHARS.fullmatch(c)})
        raise CalcError(f"unsupported character(s) {''.join(bad)!r}; use integers, + - * / ( )")
    try:
        value = _evaluator().eval(expr)
    except CalcError:
        raise
    except SyntaxError:
        raise CalcError("syntax error") from None
    except simpleeval.OperatorNotDefined:
        raise CalcError("unsupported operator; use + - * /") from None
    except simpleeval.InvalidExpression:
        raise CalcError("unsupported expression; use integers, + - * / ( )") from None
    except (RecursionError, MemoryError):
        raise CalcError("expression too deeply nested") from None
    if not isinstance(value, Fraction):  # e.g. a bare tuple slipped through: refuse, never guess
        raise CalcError("unsupported expression; use integers, + - * / ( )")
    return value


def calculate(expr: str) -> str:
    """Tool entry point: expression text -> result text, or "error: <reason>". Never raises."""
    try:
        return format_value(evaluate(expr))
    except CalcError as e:
        return f"error: {e}"
    except Exception as e:  # noqa: BLE001 - a tool result must never crash the decode engine
        return f"error: {type(e).__name__}"
