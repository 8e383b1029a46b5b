"""The models a server serves: every finished stage of a workdir under its stage name.

Chat stages (sft and the RL stages after it) answer /v1/chat/completions through the chat
template and /v1/completions on raw text; the base model (`pretrain`, only when asked for by
`--stages`) answers /v1/completions alone. Each model gets its own `Engine` (own slots, queue and
prefix cache) and the workdir's tokenizer.

LoRA adapters are served as `<base stage>+<adapter>` (e.g. `pretrain+lora_sft`): every finished
stage that saved an `adapter.safetensors` (lora_sft), plus `--adapters name=path[@stage]`. The
adapters of one base share its engine and its one copy of the weights: each request's rows go
through their own adapter inside the shared batch (`gpt_jax.lora_batch`). An adapter is refused
when its shapes do not fit the base or its header's base fingerprint is another model's.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable

from gpt_jax.serve.engine import Engine

CHAT_STAGES = ("sft", "lora_sft", "ppo", "feedme", "grpo", "dpo")
BASE_STAGES = ("pretrain",)


@dataclasses.dataclass
class ServedModel:
    name: str
    engine: Engine
    tokenizer: object
    chat: bool
    tool: Callable[[str], str] | None
    tool_names: tuple[str, ...]
    created: int
    adapter: str | None = None  # a LoRA adapter of `engine` (which holds the base weights)

    @property
    def context(self) -> int:
        return self.engine.config.max_seq_len

    def stop_ids(self, chat: bool) -> frozenset[int]:
        tok = self.tokenizer
        return frozenset({tok.eos_id, tok.token_id("assistant_end")} if chat else {tok.eos_id})


@dataclasses.dataclass
class Moderator:
    """The workdir's moderation classifier (`gpt_jax.train.moderation`): p(harmful) of texts."""

    probs: Callable[[list[str]], "object"]  # texts -> np.ndarray [N] in [0, 1]
    threshold: float
    every: int = 16  # a streamed reply is checked every this many tokens

    def flagged(self, text: str) -> bool:
        return bool(self.probs([text])[0] >= self.threshold)


def load_moderator(workdir: str | Path, every: int = 16) -> Moderator | None:
    """The finished `moderation` stage as a `Moderator`, or None when the workdir has none."""
    import threading

    from gpt_jax.metrics import read_summary
    from gpt_jax.tokenizer import Tokenizer
    from gpt_jax.train import moderation

    workdir = Path(workdir)
    if read_summary(workdir / moderation.STAGE) is None:
        return None
    model_config, params, summary = moderation.load_moderation_model(str(workdir))
    seq_len = int(json.loads((workdir / moderation.STAGE / "config.json").read_text())
                  ["train"]["seq_len"])
    tokenizer = Tokenizer.load(workdir / "tokenizer" / "tokenizer.json")
    classify = moderation.make_classifier(model_config, tokenizer, seq_len, rows=8)
    lock = threading.Lock()  # one check at a time (the engine threads and the HTTP layer share it)

    def probs(texts):
        with lock:
            return classify(params, list(texts))

    probs(["warm-up"])  # compile before the first request
    return Moderator(probs, float(summary.get("threshold", 0.5)), every)


def finished_stages(workdir: str | Path) -> list[str]:
    from gpt_jax.metrics import read_summary

    return [s for s in CHAT_STAGES if read_summary(Path(workdir) / s) is not None]


def find_adapters(workdir: str | Path, explicit: list[str] = ()) -> dict[str, tuple]:
    """{name: (lora.Adapter, base stage)}: each finished stage's `adapter.safetensors` (named by
    its stage), then `name=path[@stage]` entries (the base from `@`, else the header's
    `base_stage`)."""
    from gpt_jax import lora
    from gpt_jax.metrics import read_summary

    workdir, out = Path(workdir), {}
    for stage in CHAT_STAGES:
        path = workdir / stage / "adapter.safetensors"
        if path.exists() and read_summary(workdir / stage) is not None:
            adapter = lora.load_adapter(path)
            out[stage] = (adapter, adapter.meta.get("base_stage", "sft"))
    for spec in explicit:
        name, sep, rest = spec.partition("=")
        path, _, base = rest.partition("@")
        if not sep or not name or not path:
            raise ValueError(f"--adapters {spec!r}: expected name=path[@stage]")
        adapter = lora.load_adapter(path)
        base = base or adapter.meta.get("base_stage")
        if not base:
            raise ValueError(f"--adapters {spec!r}: its header names no base stage; add @stage")
        out[name] = (adapter, base)
    return out


def adapters_of(params, found: dict[str, tuple], base: str) -> dict:
    """{name: lora.Adapter} of the adapters trained on `base` (params in its saved layout),
    each checked against it."""
    from gpt_jax import lora

    fingerprint, out = None, {}
    for name, (adapter, on) in found.items():
        if on != base:
            continue
        lora.check_fits(params, adapter)
        want = adapter.meta.get("base_fingerprint")
        fingerprint = fingerprint or lora.params_fingerprint(params)
        if want and want != fingerprint:
            raise lora.AdapterError(f"adapter {name!r} was trained on another {base!r} model "
                                    f"(fingerprint {want}, this one {fingerprint})")
        out[name] = adapter
    return out


def load_models(workdir: str | Path, stages: list[str] | None, *, slots: int, max_queue: int,
                prefix_cache_mb: float, tools: list[str], warmup: bool = True,
                adapters: list[str] = (), step_delay_s: float = 0.0,
                overlap: bool = True) -> dict[str, ServedModel]:
    from gpt_jax.checkpoint import load_stage
    from gpt_jax.metrics import read_summary
    from gpt_jax.tokenizer import Tokenizer
    from gpt_jax.tools import toolbox

    workdir = Path(workdir)
    tok_path = workdir / "tokenizer" / "tokenizer.json"
    if not tok_path.exists():
        raise FileNotFoundError(f"{tok_path} not found: has the tokenizer stage run in {workdir}?")
    tokenizer = Tokenizer.load(tok_path)
    stages = stages or finished_stages(workdir)
    if not stages:
        raise FileNotFoundError(f"no finished chat stage ({', '.join(CHAT_STAGES)}) in {workdir}")
    tool = toolbox(tools) if tools else None
    found = find_adapters(workdir, adapters)
    bases = list(dict.fromkeys(base for _, base in found.values()))
    models = {}
    for stage in stages + [b for b in bases if b not in stages]:
        if stage not in CHAT_STAGES + BASE_STAGES:
            raise ValueError(f"--stages has {stage!r}; servable: {CHAT_STAGES + BASE_STAGES}")
        if read_summary(workdir / stage) is None:
            raise FileNotFoundError(f"stage {stage!r} has not finished in {workdir}")
        config, params = load_stage(workdir, stage)
        attached = adapters_of(params, found, stage)
        engine = Engine(params, config, tokenizer, n_slots=slots, max_queue=max_queue,
                        prefix_cache_mb=prefix_cache_mb, adapters=attached,
                        step_delay_s=step_delay_s, overlap=overlap)
        if warmup:
            engine.warmup()
        engine.start()
        created = int((workdir / stage / "config.json").stat().st_mtime)
        chat = stage in CHAT_STAGES
        if stage in stages:
            models[stage] = ServedModel(stage, engine, tokenizer, chat, tool if chat else None,
                                        tuple(tools) if chat else (), created)
        for name in attached:  # adapters are chat finetunes
            models[f"{stage}+{name}"] = ServedModel(f"{stage}+{name}", engine, tokenizer, True,
                                                    tool, tuple(tools), created, adapter=name)
    return models
