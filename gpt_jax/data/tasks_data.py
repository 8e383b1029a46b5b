"""Task data for the SFT and reward stages: the task config section, task demonstrations as an
SFT source mixed with the shipped conversation sets, and SFT demonstrations for the RM bias.

`config.tasks` (see `tasks_config`) names the verifiable task and its size; the SFT mixture is
`config.data.sft_weights` plus a source "task:<name>" of rendered demonstrations with weight
`config.tasks.demo_weight` (relative to the other weights; all are normalized together), and
with `config.tasks.context.weight` > 0 a source "task:context" of answer-from-context
conversations (the retrieval memory's SFT task, `context_conversations`).
"""
from __future__ import annotations

import ml_collections
import numpy as np

from gpt_jax.data import pipeline, registry, sft
from gpt_jax.tasks import get_task


def tasks_config(name: str = "arithmetic", demo_weight: float = 0.3,
                 **task) -> ml_collections.ConfigDict:
    """`task` sets train_problems / heldout_problems or the arithmetic task's own fields."""
    cfg = ml_collections.ConfigDict({
        "name": name,                 # "arithmetic" | "gsm8k"
        "demo_weight": demo_weight,   # share of task demonstrations in the SFT mix (relative)
        "train_problems": 20000,      # demonstrations drawn for SFT (arithmetic; gsm8k: all)
        "heldout_problems": 500,      # held-out problems (SFT eval loss, sampling, RM, PPO eval)
        # level and answer-mode mixtures of the SFT demonstrations (gpt_jax/tasks/arithmetic.py)
        "arithmetic": {"levels": "L1:0.4,L2:0.35,L3:0.25",
                       "modes": "direct:0.25,cot:0.4,calc:0.35"},
        # the modes of the prompts the reward model, RL stages and SFT's own eval sample on
        "rl_modes": "cot",
        # "answer from the given context" (gpt_jax/memory/synthetic.py): conversations whose user
        # message carries retrieved facts between the retrieval tokens, as an SFT source
        # "task:context" of this relative weight (0: none). `facts` synthetic facts, the last
        # `heldout` of them held out (the memory stage asks about those); `k` hits per question.
        "context": {"weight": 0.0, "facts": 10000, "heldout": 200, "k": 3, "seed": 0},
    })
    for key, value in task.items():  # top-level keys here, the rest are the task's own
        (cfg if key in cfg else cfg.arithmetic)[key] = value
    return cfg


def make_task(tasks_cfg, config=None, workdir: str | None = None, modes: str | None = None):
    """The configured task; `modes` replaces the arithmetic task's mode mixture."""
    if tasks_cfg.name == "arithmetic":
        fields = tasks_cfg.arithmetic.to_dict()
        return get_task("arithmetic", **{**fields, **({"modes": modes} if modes else {})})
    root = pipeline.resolve_cache_dir(config, workdir, None)
    return get_task(tasks_cfg.name, data_dir=config.data.dir or None, cache_dir=str(root))


def task_problems(config, split: str, workdir: str | None = None, n: int | None = None,
                  modes: str | None = None):
    t = config.tasks
    task = make_task(t, config, workdir, modes)
    n = n or (t.train_problems if split == "train" else t.heldout_problems)
    return task, task.problems(split, n, seed=config.seed)


def rl_problems(config, split: str, workdir: str | None = None, n: int | None = None):
    """(task, problems) asked in `config.tasks.rl_modes`: what the reward model is trained on and
    the RL stages sample (the SFT mixture covers every mode)."""
    return task_problems(config, split, workdir, n, modes=config.tasks.get("rl_modes") or None)


def render_demos(tokenizer, task, problems, max_len: int) -> list:
    return render_conversations(tokenizer, (task.demonstration(p) for p in problems), max_len)


def context_conversations(context, split: str) -> list[list[dict]]:
    """The answer-from-context conversations of `split` ("train" | "heldout") for the
    `config.tasks.context` section (the same facts the memory stage indexes)."""
    from gpt_jax.memory.synthetic import context_task

    n_held = int(context.heldout)
    task = context_task(int(context.facts) - n_held, n_held, k=int(context.k),
                        seed=int(context.seed))
    return task["train"] if split == "train" else task["heldout"][1]


def render_conversations(tokenizer, conversations, max_len: int) -> list:
    out = []
    for messages in conversations:
        ids, mask = tokenizer.render_chat(messages)
        out.append((np.asarray(ids[:max_len], np.int32), np.asarray(mask[:max_len], np.int32)))
    return out


def _conversation_sources(config, workdir, split, tokenizer, max_len):
    d = config.data
    root = pipeline.resolve_cache_dir(config, workdir, None)
    rendered, dropped, builders = {}, {}, {}
    for name, w in sorted(dict(d.sft_weights).items()):
        if float(w) <= 0:
            continue
        builders[name] = registry.prepare(
            name, data_dir=d.dir or None, cache_dir=root, skip_bad_records=d.skip_bad_records,
            identity=(d.identity.name, d.identity.author) if name == "identity" else None)
        if tokenizer is not None:
            rendered[name], dropped[name] = sft.render_source(builders[name], split, tokenizer,
                                                              max_len)
    return rendered, dropped, builders


def make_sft_mixture_iterator(config, tokenizer, split: str, batch_size: int, seq_len: int,
                              seed: int, workdir: str | None = None) -> sft.SFTIterator:
    """Packed SFT batches over the shipped conversation sets + the task's demonstrations."""
    rendered, dropped, _ = _conversation_sources(config, workdir, split, tokenizer, seq_len + 1)
    weights = {n: float(w) for n, w in dict(config.data.sft_weights).items() if float(w) > 0}
    if config.tasks.demo_weight > 0:
        task, problems = task_problems(config, split, workdir)
        name = f"task:{task.name}"
        rendered[name] = render_demos(tokenizer, task, problems, seq_len + 1)
        dropped[name] = 0
        weights[name] = float(config.tasks.demo_weight)
    context = config.tasks.get("context")
    if context is not None and float(context.weight) > 0:
        rendered["task:context"] = render_conversations(
            tokenizer, context_conversations(context, split), seq_len + 1)
        dropped["task:context"] = 0
        weights["task:context"] = float(context.weight)
    weights = pipeline.normalized_weights(weights)
    d = config.data
    it = sft.SFTIterator(rendered, weights, batch_size=batch_size, seq_len=seq_len, seed=seed,
                         split=split, pad_id=tokenizer.pad_id, pack=d.pack_conversations,
                         loader_threads=d.loader_threads, prefetch=d.prefetch_batches)
    it.dropped = dropped
    it.conversation_counts = {n: len(r) for n, r in rendered.items()}
    it.weights = weights
    return it


def sft_demonstrations(config, workdir: str | None, n: int) -> list[tuple[list, str]]:
    """n held-out SFT demonstrations as (prompt messages, reply text): half task demonstrations,
    half the last assistant reply of held-out conversations, round-robin over the SFT sets."""
    out = []
    if config.tasks.demo_weight > 0:
        task, problems = rl_problems(config, "heldout", workdir, n=max(1, n // 2))
        out += [(task.prompt_messages(p), p.solution) for p in problems]
    _, _, builders = _conversation_sources(config, workdir, "heldout", None, 0)
    per_source = []
    for name, b in builders.items():
        convs = []
        for rec in registry.read_records(b, "heldout"):
            msgs = rec["messages"]
            last = max((i for i, m in enumerate(msgs) if m["role"] == "assistant"), default=-1)
            if last > 0:
                convs.append((msgs[:last], msgs[last]["content"]))
        per_source.append(convs)
    i = 0
    while len(out) < n and any(per_source):
        src = per_source[i % len(per_source)]
        if src:
            out.append(src.pop(0))
        i += 1
    return out
