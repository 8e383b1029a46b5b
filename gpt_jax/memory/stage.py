"""The memory stage: retrieval memory measured on the synthetic fact set, retrieval alone and end
to end on one chat model (`config.parent`, the SFT model).

The facts are the parent's own answer-from-context task (`tasks.context` of its saved config, the
section SFT trained on): `facts` synthetic facts, the last `heldout` of them never trained on.
1. Retrieval: a BM25 index (gpt_jax.memory.index) over all the facts; recall@`recall_k` of the
   fact a paraphrased question asks for, over `queries` questions spread over the set, and the
   median time of one query (after a warm-up). `query_ms_10k` is that time when the index holds
   10,000 facts (the issue's yardstick), else absent (`query_ms` and `chunks` always).
2. Answers, greedy, on each held-out question, three ways on the same checkpoint:
   - `with`: the index's top `k` hits above `min_score` as the user message's context (between
     the retrieval tokens, as the chat CLI and server send them);
   - `without`: the question alone (what the model knows by itself: chance, for these facts);
   - `gold_context`: the SFT task's own held-out context (the fact among k - 1 distractors), which
     separates reading from retrieving.
   A reply is right when it contains the fact's value as a whole word (case-insensitive).

Writes `<workdir>/memory/summary.json` (recall_at_<k>, query_ms, query_ms_10k, accuracy_with,
accuracy_without, accuracy_gold_context, hit_rate: the share of questions whose fact was among
the hits given, examples) and answers.jsonl (every question, its hits and the three replies).
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import ml_collections

from gpt_jax.metrics import write_summary
from gpt_jax.stages import begin_stage

STAGE = "memory"
WAYS = ("with", "without", "gold_context")


def memory_config(**overrides) -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict({
        "k": 3,                 # hits put in the prompt (the SFT task trains on 3)
        "min_score": 0.0,       # relevance threshold on the BM25 score
        "recall_k": 5,          # recall@k of the retrieval figure
        "queries": 500,         # questions timed and scored for recall
        "max_new_tokens": 32,
        "gen_batch": 32,
        "examples": 4,          # replies kept in the summary
    })
    cfg.update(overrides)
    return cfg


def is_right(value: str, reply: str) -> bool:
    """The fact's value appears in the reply as a whole word ("4821" not inside "48210")."""
    return re.search(rf"(?<!\w){re.escape(value)}(?!\w)", reply, re.IGNORECASE) is not None


def context_section(workdir: str | Path, parent: str) -> ml_collections.ConfigDict:
    """The parent's `tasks.context` (what it trained on), from its saved config."""
    saved = json.loads((Path(workdir) / parent / "config.json").read_text())
    context = saved.get("tasks", {}).get("context")
    if not context:
        raise ValueError(f"{parent}/config.json has no tasks.context section: the memory stage "
                         f"asks about the facts of the parent's answer-from-context task")
    return ml_collections.ConfigDict(context)


def greedy_replies(params, model_config, tokenizer, conversations, c) -> list[str]:
    """The model's greedy reply text to each conversation (generated in equal chunks)."""
    from gpt_jax.sampling import SamplingConfig, generate
    from gpt_jax.seq_utils import equal_chunks
    from gpt_jax.train.sft import vocab_limit_processor

    stop = (tokenizer.token_id("assistant_end"), tokenizer.eos_id)
    sampling = SamplingConfig(temperature=0.0, max_new_tokens=int(c.max_new_tokens),
                              stop_ids=stop)
    processor = (vocab_limit_processor(tokenizer.vocab_size)
                 if model_config.vocab_size > tokenizer.vocab_size else None)
    prompts = [tokenizer.render_for_completion(m) for m in conversations]
    out = []
    for part in equal_chunks(len(prompts), int(c.gen_batch)):
        gen = generate(params, model_config, prompts[part], sampling,
                       logit_processor=processor, pad_id=tokenizer.pad_id, tokenizer=tokenizer)
        for i in range(gen.tokens.shape[0]):
            ids = [t for t in gen.row(i) if t not in stop]
            out.append(tokenizer.decode(ids).strip())
    return out


def run(config, workdir: str) -> dict[str, Any]:
    from gpt_jax.checkpoint import load_stage
    from gpt_jax.data.tasks_data import context_conversations
    from gpt_jax.memory.index import BM25Index
    from gpt_jax.memory.measure import asked, recall, timed
    from gpt_jax.memory.synthetic import make_facts
    from gpt_jax.tokenizer import Tokenizer

    stage_dir, done = begin_stage(config, workdir, STAGE, parent=config.parent)
    if done is not None:
        return done
    t_start = time.perf_counter()
    c = config.memory
    ctx = context_section(workdir, config.parent)
    facts = make_facts(int(ctx.facts), int(ctx.seed))
    held = facts[len(facts) - int(ctx.heldout):]

    t = time.perf_counter()
    index = BM25Index([f.text for f in facts])
    build_s = time.perf_counter() - t
    timed_facts = asked(facts, int(c.queries))
    query_ms, found = timed(lambda q: [h.id for h in index.search(q, int(c.recall_k))],
                            [f.question for f in timed_facts])
    recall_k = recall([f.id for f in timed_facts], found)

    tokenizer = Tokenizer.load(str(Path(workdir) / "tokenizer" / "tokenizer.json"))
    model_config, params = load_stage(workdir, config.parent)
    hits = index.search_many([f.question for f in held], int(c.k), float(c.min_score))
    asks = {
        "with": [[{"role": "user", "content": f.question, "context": [h.text for h in hs]}]
                 for f, hs in zip(held, hits)],
        "without": [[{"role": "user", "content": f.question}] for f in held],
        "gold_context": [conv[:1] for conv in context_conversations(ctx, "heldout")],
    }
    replies = {way: greedy_replies(params, model_config, tokenizer, asks[way], c) for way in WAYS}
    right = {way: [is_right(f.value, r) for f, r in zip(held, replies[way])] for way in WAYS}
    given = [any(h.id == f.id for h in hs) for f, hs in zip(held, hits)]

    with open(stage_dir / "answers.jsonl", "w") as fh:
        for i, f in enumerate(held):
            fh.write(json.dumps({"question": f.question, "fact": f.text, "value": f.value,
                                 "hits": [h.text for h in hits[i]], "fact_in_hits": given[i],
                                 **{f"reply_{w}": replies[w][i] for w in WAYS},
                                 **{f"right_{w}": right[w][i] for w in WAYS}}) + "\n")
    mean = lambda xs: sum(xs) / max(len(xs), 1)  # noqa: E731
    summary = {
        "stage": STAGE, "parent": config.parent, "chunks": len(facts),
        "questions": len(held), "k": int(c.k), "min_score": float(c.min_score),
        f"recall_at_{int(c.recall_k)}": recall_k, "recall_queries": len(timed_facts),
        "query_ms": query_ms, "index_build_s": build_s,
        **({"query_ms_10k": query_ms} if len(facts) == 10_000 else {}),
        **{f"accuracy_{w}": mean(right[w]) for w in WAYS},
        "hit_rate": mean(given),
        "examples": [{"question": held[i].question, "hits": [h.text for h in hits[i]],
                      "with": replies["with"][i], "without": replies["without"][i],
                      "value": held[i].value}
                     for i in range(min(int(c.examples), len(held)))],
        "wall_seconds": time.perf_counter() - t_start,
    }
    write_summary(stage_dir, summary)
    print(f"memory: recall@{int(c.recall_k)} {recall_k:.3f}, {query_ms:.2f} ms/query over "
          f"{len(facts):,} facts; answers with retrieval {summary['accuracy_with']:.3f}, "
          f"without {summary['accuracy_without']:.3f}, gold context "
          f"{summary['accuracy_gold_context']:.3f} ({len(held)} held-out questions)")
    return summary
