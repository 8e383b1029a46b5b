"""How well does the SFT model's own likelihood order the reward stage's held-out comparisons?

A reward model on the SFT trunk can at best verify what the SFT model computes. This scores each
held-out reply of `<workdir>/reward/comparisons.jsonl` by its log-probability under the workdir's
SFT model (no training: the summed, the per-token mean and the least likely token's log-prob) and
prints each score's pairwise accuracy against the gold order, overall and per level, next to the
"prefer the longer reply" baseline and the trained reward model's figure from its summary.

  python experiments/rm_likelihood_ceiling.py --workdir runs/tiny
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

import ml_collections
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpt_jax.checkpoint import load_stage  # noqa: E402
from gpt_jax.data import tasks_data  # noqa: E402
from gpt_jax.scoring import logprobs  # noqa: E402
from gpt_jax.tasks import Problem  # noqa: E402
from gpt_jax.tokenizer import Tokenizer  # noqa: E402
from gpt_jax.train.reward import pairwise_accuracy  # noqa: E402

SCORES = {"sum": np.sum, "mean": np.mean, "min": np.min}


def reply_logprobs(workdir: str, records: list[dict], batch: int = 64) -> list[list[np.ndarray]]:
    """Per record, per reply: the log-prob of each reply token (its end token included) under
    the workdir's SFT model, given the task's prompt."""
    config, params = load_stage(workdir, "sft")
    tok = Tokenizer.load(str(Path(workdir) / "tokenizer" / "tokenizer.json"))
    # the task as the reward stage built it when it sampled the comparisons
    exp = ml_collections.ConfigDict(json.loads((Path(workdir) / "reward" / "config.json")
                                               .read_text()))
    task = tasks_data.make_task(exp.tasks, exp, workdir)
    end = tok.token_id("assistant_end")
    prompts, replies = [], []
    for rec in records:
        prompt = tok.render_for_completion(task.prompt_messages(Problem.from_dict(rec["problem"])))
        for ids in rec["completion_ids"]:
            prompts.append(prompt)
            replies.append(list(ids) if ids and ids[-1] == end else list(ids) + [end])
    flat = []
    for i in range(0, len(prompts), batch):
        lp, mask = logprobs(params, config, prompts[i:i + batch], replies[i:i + batch])
        flat += [row[m] for row, m in zip(lp, mask)]
    out, pos = [], 0
    for rec in records:
        out.append(flat[pos:pos + len(rec["completion_ids"])])
        pos += len(rec["completion_ids"])
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", required=True, help="a workdir whose reward stage has run")
    args = p.parse_args()
    path = Path(args.workdir) / "reward" / "comparisons.jsonl"
    records = [r for r in map(json.loads, path.read_text().splitlines()) if r["split"] == "heldout"]
    lps = reply_logprobs(args.workdir, records)
    golds = [r["gold"] for r in records]
    lengths = [[len(ids) for ids in r["completion_ids"]] for r in records]
    levels = collections.defaultdict(list)
    for i, r in enumerate(records):
        levels[r["problem"].get("level", "?")].append(i)
    for name, fn in SCORES.items():
        scores = [np.array([fn(x) for x in per]) for per in lps]
        total = pairwise_accuracy(scores, golds, lengths)
        by_level = {lv: pairwise_accuracy([scores[i] for i in idx], [golds[i] for i in idx],
                                          [lengths[i] for i in idx])["accuracy"]
                    for lv, idx in sorted(levels.items())}
        print(f"{name:>5} log-prob: {total['accuracy']:.3f} against gold on {total['pairs']} pairs "
              f"(longer reply: {total['length_baseline']:.3f}); by level "
              + ", ".join(f"{lv} {a:.3f}" for lv, a in by_level.items()))
    summary = Path(args.workdir) / "reward" / "summary.json"
    if summary.exists():
        trained = json.loads(summary.read_text())["heldout_accuracy"]["labeler_vs_gold"]
        print(f"the trained reward model: {trained['accuracy']:.3f} on {trained['pairs']} pairs")


if __name__ == "__main__":
    main()
