"""Calculator tool: exact integer arithmetic, formatting, and every refusal as an error string."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpt_jax.tools.calculator import MAX_ABS, MAX_CHARS, calculate


@pytest.mark.parametrize("expr, want", [
    ("23 + 45", "68"), ("12*3", "36"), ("84 / 4", "21"), ("10 / 4", "2.5"), ("1 / 3", "0.333333"),
    ("2 / 3", "0.666667"), ("-1 / 3", "-0.333333"), ("1 / 3 * 3", "1"), ("-(2 * 3) + 1", "-5"),
    ("--1", "1"), ("+5", "5"), ("(((7)))", "7"), ("0 / 5", "0"), ("1 / 3000000", "3.33333e-7"),
    ("1000000 * 1000000", str(10**12)), ("  4-6 ", "-2"),
])
def test_values(expr, want):
    assert calculate(expr) == want


@pytest.mark.parametrize("expr, reason", [
    ("1 / 0", "division by zero"), ("5 / (3 - 3)", "division by zero"),
    ("2 ** 3", "unsupported operator"), ("7 // 2", "unsupported operator"),
    ("7 % 2", "unsupported character"), ("1.5 + 1", "unsupported character"),
    ("1e3", "unsupported character"), ("abs(1)", "unsupported character"),
    ("x + 1", "unsupported character"), ("__import__('os')", "unsupported character"),
    ("(1).real", "unsupported character"), ("1_000", "unsupported character"),
    ("(1 +", "syntax error"), ("1 2", "syntax error"), ("", "empty expression"),
    ("()", "unsupported expression"), ("(1)(2)", "unsupported expression"),
    ("1" * (MAX_CHARS + 1), "longer than"), (str(MAX_ABS + 1), "out of range"),
    ("1000000 * 1000001", "out of range"), ("999999 * 999999 * 999999 / 999999", "out of range"),
])
def test_refusals_are_error_strings(expr, reason):
    out = calculate(expr)
    assert out.startswith("error: ") and reason in out, out


def test_non_string_input_is_an_error_string():
    assert calculate(None).startswith("error: ")  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(st.integers(-10**5, 10**5), st.integers(-10**5, 10**5), st.sampled_from("+-*"))
def test_integer_arithmetic_matches_python(a, b, op):
    want = {"+": a + b, "-": a - b, "*": a * b}[op]
    assert calculate(f"{a} {op} ({b})") == str(want)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=MAX_CHARS))
def test_never_raises(expr):
    assert isinstance(calculate(expr), str)
