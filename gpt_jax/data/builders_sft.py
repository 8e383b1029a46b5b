"""SFT builders (record type `conversation`): LIMA (with multi-turn history), Alpaca-format demos
(en/zh), Alpaca seed tasks, Code Alpaca, GPTeacher, OASST zh, ShareGPT zh, and the identity set
whose {{name}}/{{author}} placeholders are filled from config at build time."""
from __future__ import annotations

import hashlib

import tensorflow_datasets as tfds

from gpt_jax.data import records as R
from gpt_jax.data.builder_base import SourceBuilder
from gpt_jax.data.readers import BadRecordError, field, iter_json_list, iter_jsonl


class _AlpacaFormat(SourceBuilder):
    """JSON list of {instruction, input, output[, history]} -> user/assistant turns."""

    RECORD_TYPE = "conversation"
    OUTPUT_KEY = "output"

    READER = staticmethod(iter_json_list)

    def _convert(self, obj) -> dict:
        return {"messages": R.check_conversation(R.alpaca_conversation(obj, self.OUTPUT_KEY))}


class Lima(_AlpacaFormat):
    """LIMA: 1,029 curated conversations (29 multi-turn through `history`)."""

    FILES = ("sft/lima/lima.json",)


class AlpacaEnDemo(_AlpacaFormat):
    """LLaMA-Factory alpaca_en_demo: 999 English instruction/response pairs."""

    FILES = ("sft/llamafactory_demo/alpaca_en_demo.json",)


class AlpacaZhDemo(_AlpacaFormat):
    """LLaMA-Factory alpaca_zh_demo: 1,000 Chinese instruction/response pairs."""

    FILES = ("sft/llamafactory_zh/alpaca_zh_demo.json",)


class OasstSftZh(_AlpacaFormat):
    """OpenAssistant Chinese subset (oaast_sft_zh): 689 conversations, 390 multi-turn."""

    FILES = ("sft/llamafactory_zh/oaast_sft_zh.json",)


class CodeAlpaca(_AlpacaFormat):
    """Code Alpaca 2k: 2,017 coding instructions."""

    FILES = ("sft/code_alpaca/code_alpaca_2k.json",)


class Gpteacher(_AlpacaFormat):
    """GPTeacher Codegen (4,535) + Roleplay (1,923) = 6,458; the answer key is `response`."""

    FILES = (
        "sft/gpteacher/codegen-instruct.json",
        "sft/gpteacher/roleplay-simple-deduped-roleplay-instruct.json",
    )
    OUTPUT_KEY = "response"


class AlpacaSeedTasks(SourceBuilder):
    """Self-instruct human-written seed tasks: 175, each instruction + its first instance."""

    RECORD_TYPE = "conversation"
    FILES = ("sft/alpaca_seed_tasks/seed_tasks.jsonl",)

    READER = staticmethod(iter_jsonl)

    @staticmethod
    def _convert(obj) -> dict:
        instances = field(obj, "instances", list)
        if not instances:
            raise BadRecordError("task has no instances")
        inst = instances[0]
        row = {"instruction": field(obj, "instruction"), "input": field(inst, "input")}
        msgs = [R.message("user", R.alpaca_prompt(row)), R.message("assistant", field(inst, "output"))]
        return {"messages": msgs}


class SharegptZh(SourceBuilder):
    """MedicalGPT ShareGPT zh: 1,000 multi-turn conversations (7 end on a user turn; kept)."""

    RECORD_TYPE = "conversation"
    FILES = ("sft/medicalgpt_sharegpt_zh/sharegpt_zh_1K_format.jsonl",)

    READER = staticmethod(iter_jsonl)

    @staticmethod
    def _convert(obj) -> dict:
        msgs = R.sharegpt_messages(field(obj, "conversations", list))
        return {"messages": R.check_conversation(msgs)}


class IdentityConfig(tfds.core.BuilderConfig):
    """Who the assistant says it is; the config name encodes the values so caches don't mix."""

    def __init__(self, *, assistant_name: str, author: str):
        digest = hashlib.sha256(f"{assistant_name}\0{author}".encode()).hexdigest()[:10]
        super().__init__(name=f"filled_{digest}", description=f"{assistant_name} by {author}")
        self.assistant_name = assistant_name
        self.author = author


class Identity(_AlpacaFormat):
    """Self-identity Q/A (91) with {{name}} and {{author}} filled from `config.data.identity`."""

    FILES = ("sft/llamafactory_demo/identity.json",)
    BUILDER_CONFIGS = [IdentityConfig(assistant_name="gpt_jax", author="the gpt_jax authors")]

    def _convert(self, obj) -> dict:
        conv = super()._convert(obj)
        cfg = self.builder_config
        for m in conv["messages"]:
            m["content"] = (
                m["content"].replace("{{name}}", cfg.assistant_name).replace("{{author}}", cfg.author)
            )
        return conv
