"""Our suite of structured-output cases (JSON schemas and regexes) and how a sampled output is judged.

Why a suite of our own: constrained decoding is only trustworthy if EVERY sample of EVERY case
validates, across the schema features people use: nested objects, arrays with min/max items,
enums and consts, bounded integers, anyOf / oneOf, string patterns and formats (dates, times,
e-mails, UUIDs), numbers with a fixed number of digits, $ref / $defs, and regexes. A case is
judged by an independent validator: `jsonschema` (with its format checker) for schemas, Python's
`re.fullmatch` (ASCII classes, as `structured.Constraint.regex` uses) for regexes.

Open-ended values carry a bound (a string's maxLength, an array's maxItems, a number's multipleOf,
a date-time without fractional seconds): a free string has no end a sampler is drawn to, and the
tiny recipe's digit-loving model writes a `number` or a date-time's fraction until its token
budget ends; a cut output is invalid whatever the constraint.

`run_suite` samples every case (each row with its own constraint, all cases in one batch, so the
batch mixes constraints) with and without the constraint, and returns per-case valid rates
(`benchmarks/constrained_overhead.py` prints them for a trained stage; tests/test_structured.py
requires 100% with the constraint).
"""
from __future__ import annotations

import json
import re
from typing import Any

import jsonschema

from gpt_jax.structured import Constraint

S = {"type": "string", "maxLength": 12}  # a bounded free string
# llguidance's `format: date` is a regex: it admits Feb 29 in every year (jsonschema does not);
# the day pattern keeps the case to dates both agree on.
DATE = {"type": "string", "format": "date", "pattern": r"-(0[1-9]|1[0-9]|2[0-8])$"}


def _obj(props: dict, required: list | None = None, **extra) -> dict:
    return {"type": "object", "properties": props,
            "required": list(props) if required is None else required,
            "additionalProperties": False, **extra}


SCHEMAS: dict[str, dict] = {
    "person": _obj({"name": S, "age": {"type": "integer", "minimum": 0, "maximum": 120}}),
    "bool_flag": _obj({"ok": {"type": "boolean"}}),
    "null_value": _obj({"value": {"type": "null"}}),
    "enum_color": _obj({"color": {"enum": ["red", "green", "blue"]}}),
    "const_version": _obj({"version": {"const": 2}, "tag": S}),
    "int_bounds": _obj({"n": {"type": "integer", "minimum": -50, "maximum": 50}}),
    "int_exclusive": _obj({"n": {"type": "integer", "exclusiveMinimum": 0,
                                 "exclusiveMaximum": 10}}),
    "int_year": _obj({"year": {"type": "integer", "minimum": 1900, "maximum": 2100}}),
    "four_digit_int": {"type": "integer", "minimum": 1000, "maximum": 9999},
    "number_quarters": _obj({"x": {"type": "number", "minimum": 0, "maximum": 10,
                                   "multipleOf": 0.25}}),
    "price_two_decimals": _obj({"price": {"type": "string", "pattern": r"^[0-9]{1,4}\.[0-9]{2}$"}}),
    "zip_code": _obj({"zip": {"type": "string", "pattern": r"^[0-9]{5}$"}}),
    "phone": _obj({"phone": {"type": "string", "pattern": r"^\+1-[0-9]{3}-[0-9]{3}-[0-9]{4}$"}}),
    "upper_code": _obj({"code": {"type": "string", "pattern": r"^[A-Z]{3}-[0-9]{2}$"}}),
    "hex_color": _obj({"hex": {"type": "string", "pattern": r"^#[0-9a-f]{6}$"}}),
    "date": _obj({"date": DATE}),
    "date_time": _obj({"at": {"type": "string", "format": "date-time",
                              "pattern": r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z$"}}),
    "time": _obj({"t": {"type": "string", "pattern": r"^([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]Z$"}}),
    "uuid": _obj({"id": {"type": "string", "format": "uuid"}}),
    "email": _obj({"email": {"type": "string", "format": "email", "maxLength": 24}}),
    "string_lengths": _obj({"s": {"type": "string", "minLength": 3, "maxLength": 6}}),
    "array_ints": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 99},
                   "minItems": 2, "maxItems": 4},
    "array_exact": {"type": "array", "items": {"type": "boolean"}, "minItems": 3,
                    "maxItems": 3},
    "array_enum": _obj({"tags": {"type": "array", "items": {"enum": ["a", "b", "c"]},
                                 "minItems": 1, "maxItems": 3}}),
    "array_empty_ok": _obj({"xs": {"type": "array", "items": {"type": "integer",
                                                             "minimum": 0, "maximum": 9},
                                   "maxItems": 2}}),
    "array_of_objects": {"type": "array", "maxItems": 3, "minItems": 1,
                         "items": _obj({"k": S, "v": {"type": "integer", "minimum": 0,
                                                     "maximum": 9}})},
    "tuple_prefix": {"type": "array", "prefixItems": [{"type": "integer", "minimum": 0,
                                                       "maximum": 9}, {"enum": ["x", "y"]}],
                     "items": False},
    "nested": _obj({"user": _obj({"name": S, "address": _obj({"city": S, "zip": {
        "type": "string", "pattern": r"^[0-9]{5}$"}})})}),
    "deep_nested": _obj({"a": _obj({"b": _obj({"c": _obj({"d": {"type": "integer",
                                                                 "minimum": 0,
                                                                 "maximum": 9}})})})}),
    "optional_fields": _obj({"id": {"type": "integer", "minimum": 0, "maximum": 999},
                             "note": S}, required=["id"]),
    "all_optional": _obj({"a": {"type": "boolean"}, "b": {"type": "null"}}, required=[]),
    "any_of": _obj({"v": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 9},
                                    {"type": "boolean"}, {"enum": ["none"]}]}}),
    "one_of_objects": {"oneOf": [_obj({"kind": {"const": "circle"},
                                       "r": {"type": "integer", "minimum": 1, "maximum": 9}}),
                                 _obj({"kind": {"const": "square"},
                                       "side": {"type": "integer", "minimum": 1,
                                                "maximum": 9}})]},
    "nullable": _obj({"v": {"type": ["integer", "null"], "minimum": 0, "maximum": 9}}),
    "ref_defs": {"$defs": {"pt": _obj({"x": {"type": "integer", "minimum": 0, "maximum": 9},
                                       "y": {"type": "integer", "minimum": 0, "maximum": 9}})},
                 **_obj({"a": {"$ref": "#/$defs/pt"}, "b": {"$ref": "#/$defs/pt"}})},
    "all_of": {"allOf": [_obj({"a": {"type": "integer", "minimum": 0, "maximum": 5}}),
                         {"required": ["a"]}]},
    "top_level_enum": {"enum": ["yes", "no", "maybe"]},
    "top_level_string": {"type": "string", "pattern": r"^[a-z]{2,5}$"},
    "boolean_only": {"type": "boolean"},
    "order_line": _obj({"sku": {"type": "string", "pattern": r"^SKU-[0-9]{4}$"},
                        "qty": {"type": "integer", "minimum": 1, "maximum": 20},
                        "unit": {"enum": ["kg", "g", "pcs"]}}),
    "event": _obj({"title": S, "date": DATE,
                   "attendees": {"type": "array", "items": S, "maxItems": 2}}),
    "answer_with_steps": _obj({"steps": {"type": "array", "maxItems": 2,
                                         "items": {"type": "string", "maxLength": 10}},
                               "answer": {"type": "integer", "minimum": 0, "maximum": 999}}),
}

REGEXES: dict[str, str] = {
    "re_digits": r"\d{3}",
    "re_phone": r"\d{3}-\d{3}-\d{4}",
    "re_iso_date": r"\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])",
    "re_time": r"([01]\d|2[0-3]):[0-5]\d",
    "re_hex": r"#[0-9a-fA-F]{6}",
    "re_yes_no": r"(yes|no)",
    "re_word_list": r"[a-z]{1,6}(, [a-z]{1,6}){0,3}",
    "re_ipv4": r"(\d{1,3}\.){3}\d{1,3}",
    "re_decimal": r"-?\d{1,3}\.\d{2}",
    "re_answer": r"The answer is \d{1,4}\.",
    "re_email": r"[a-z]{1,8}@[a-z]{1,8}\.(com|org|net)",
    "re_identifier": r"[A-Za-z_]\w{0,9}",
    "re_semver": r"\d{1,2}\.\d{1,2}\.\d{1,2}",
    "re_chinese": r"(是|否)",
}


def cases() -> list[tuple[str, Constraint]]:
    """Every case as (name, constraint): the schemas first, then the regexes."""
    return ([(n, Constraint.json_schema(s)) for n, s in SCHEMAS.items()]
            + [(n, Constraint.regex(r)) for n, r in REGEXES.items()])


def is_valid(name: str, text: str) -> bool:
    """Whether `text` is a valid output for case `name` (an independent validator)."""
    if name in REGEXES:
        return re.fullmatch(REGEXES[name], text, flags=re.ASCII) is not None
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return False
    try:
        jsonschema.validate(value, SCHEMAS[name], format_checker=jsonschema.FormatChecker())
    except jsonschema.ValidationError:
        return False
    return True


def run_suite(params, config, tokenizer, prompt: list[int], *, seeds=(0, 1, 2),
              samples: int = 4, max_new_tokens: int = 160, constrained: bool = True,
              temperature: float = 1.0) -> dict[str, Any]:
    """Samples `samples` rows per case per seed (one batch of every case's rows per seed) and
    returns {"cases": {name: {"valid": k, "total": m, "finished": f}}, "valid_rate": ...}."""
    from gpt_jax import sampling as Smp

    named = cases()
    constraints = [c for _, c in named for _ in range(samples)]
    names = [n for n, _ in named for _ in range(samples)]
    stop = (tokenizer.token_id("assistant_end"),)
    table = {n: {"valid": 0, "total": 0, "finished": 0} for n, _ in named}
    for seed in seeds:
        sp = Smp.SamplingConfig(temperature=temperature, max_new_tokens=max_new_tokens,
                                stop_ids=stop, seed=seed)
        gen = Smp.generate(params, config, [prompt] * len(names), sp, tokenizer=tokenizer,
                           constraints=constraints if constrained else None)
        for i, name in enumerate(names):
            ids = [t for t in gen.row(i) if t not in stop]
            text = tokenizer.decode([t for t in ids if t < tokenizer.vocab_size])
            row = table[name]
            row["total"] += 1
            row["finished"] += int(gen.finished[i])
            row["valid"] += int(bool(gen.finished[i]) and is_valid(name, text))
    total = sum(r["total"] for r in table.values())
    return {"cases": table, "valid_rate": sum(r["valid"] for r in table.values()) / total,
            "finished_rate": sum(r["finished"] for r in table.values()) / total}
