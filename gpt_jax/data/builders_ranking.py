"""Preference builders (record type `ranking`: a prompt conversation + responses best -> worst):
hh-rlhf harmless test pairs, OASST English trees (ranked sibling replies), DPO demos en/zh,
OASST zh reward-model rankings, MedicalGPT DPO zh."""
from __future__ import annotations

import re

from gpt_jax.data import records as R
from gpt_jax.data.builder_base import SourceBuilder
from gpt_jax.data.readers import BadRecordError, field, iter_json_list, iter_jsonl

_HH_TURN = re.compile(r"\n\n(Human|Assistant):")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


def hh_turns(dialogue: str) -> list[dict]:
    """"\\n\\nHuman: ...\\n\\nAssistant: ..." -> messages; consecutive same-role turns are merged
    (a few dialogues split one assistant reply in two)."""
    parts = _HH_TURN.split(dialogue)
    if parts[0].strip():
        raise BadRecordError("dialogue does not start with a Human/Assistant turn")
    out: list[dict] = []
    for speaker, text in zip(parts[1::2], parts[2::2]):
        role, text = _HH_ROLES[speaker], text.strip()
        if out and out[-1]["role"] == role:
            out[-1]["content"] += "\n\n" + text
        else:
            out.append({"role": role, "content": text})
    return out


class HhRlhfHarmlessTest(SourceBuilder):
    """Anthropic HH-RLHF harmless-base test: 2,312 (chosen, rejected) dialogues sharing a prefix."""

    RECORD_TYPE = "ranking"
    FILES = ("preference/hh_rlhf/harmless-base/test.jsonl.gz",)

    READER = staticmethod(iter_jsonl)

    @staticmethod
    def _convert(obj) -> dict:
        chosen, rejected = hh_turns(field(obj, "chosen")), hh_turns(field(obj, "rejected"))
        if chosen[:-1] != rejected[:-1]:
            raise BadRecordError("chosen and rejected differ before their last turn")
        if chosen[-1]["role"] != "assistant" or rejected[-1]["role"] != "assistant":
            raise BadRecordError("chosen/rejected must end with an assistant turn")
        return R.check_ranking(chosen[:-1], [chosen[-1]["content"], rejected[-1]["content"]])


class OasstEnTrees(SourceBuilder):
    """100 OASST English trees -> 212 groups of ranked sibling assistant replies (754 pairs)."""

    RECORD_TYPE = "ranking"
    FILES = ("preference/oasst_en_trees/en_100_tree.jsonl",)
    _ROLES = {"prompter": "user", "assistant": "assistant"}

    READER = staticmethod(iter_jsonl)

    def _convert(self, tree) -> list[dict]:
        out: list[dict] = []

        def walk(msg, path):
            role = self._ROLES.get(field(msg, "role"))
            if role is None:
                raise BadRecordError(f"unknown role {msg['role']!r}")
            path = path + [R.message(role, field(msg, "text"))]
            replies = msg.get("replies") or []
            ranked = [r for r in replies if r.get("role") == "assistant" and r.get("rank") is not None]
            if role == "user" and len(ranked) >= 2:
                ranked.sort(key=lambda r: r["rank"])
                out.append(R.check_ranking(path, [field(r, "text") for r in ranked]))
            for r in replies:
                walk(r, path)

        walk(field(tree, "prompt", dict), [])
        return out


class _DpoFormat(SourceBuilder):
    """{conversations: [{from, value}], chosen, rejected}; chosen/rejected are {from, value} or str."""

    RECORD_TYPE = "ranking"
    READER = staticmethod(iter_json_list)


    @staticmethod
    def _convert(obj) -> dict:
        prompt = R.sharegpt_messages(field(obj, "conversations", list))
        answers = []
        for key in ("chosen", "rejected"):
            value = field(obj, key, (dict, str))
            answers.append(value if isinstance(value, str) else field(value, "value"))
        return R.check_ranking(prompt, answers)


class DpoEnDemo(_DpoFormat):
    """LLaMA-Factory dpo_en_demo: 300 English pairs (some multi-turn, some with a system turn)."""

    FILES = ("preference/llamafactory_demo/dpo_en_demo.json",)


class DpoZhDemo(_DpoFormat):
    """LLaMA-Factory dpo_zh_demo: 300 Chinese pairs (64 with a system turn)."""

    FILES = ("preference/llamafactory_zh/dpo_zh_demo.json",)


class MedicalgptDpoZh(_DpoFormat):
    """MedicalGPT dpo_zh_500: 500 Chinese pairs (GPT-4-judged; research use only)."""

    FILES = ("preference/medicalgpt_dpo_zh/dpo_zh_500.jsonl",)
    READER = staticmethod(iter_jsonl)


class OaastRmZh(SourceBuilder):
    """OASST Chinese reward-model set: 775 prompts with 2-10 human-ranked replies, best first."""

    RECORD_TYPE = "ranking"
    FILES = ("preference/llamafactory_zh/oaast_rm_zh.json",)

    READER = staticmethod(iter_json_list)

    @staticmethod
    def _convert(obj) -> dict:
        prompt = R.history_messages(obj) + [R.message("user", R.alpaca_prompt(obj))]
        return R.check_ranking(prompt, list(field(obj, "output", list)))
