"""The harness's suites: each scores one stage (or the reward model) and returns its metrics.

Each suite splits its work into units recorded in the harness's `Parts` (resumable, keyed by
settings + stage identity); see `gpt_jax.eval.harness` for the table they fill.
"""
from __future__ import annotations

import json
import math
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

import ml_collections

from gpt_jax.progress import progress
from gpt_jax.eval.harness import Parts, stage_identity, unit_key


class Context:
    """What every suite shares: the workdir, settings, tokenizer, loaded models, progress log."""

    def __init__(self, workdir: Path, c, parts: Parts, log: Callable[[str], None]):
        self.workdir, self.c, self.parts, self.log = workdir, c, parts, log
        self._models: dict[str, tuple] = {}

    @cached_property
    def tokenizer(self):
        from gpt_jax.tokenizer import Tokenizer

        return Tokenizer.load(str(self.workdir / "tokenizer" / "tokenizer.json"))

    def model(self, stage: str):
        """(model config, params) of the stage's checkpoint."""
        if stage not in self._models:
            from gpt_jax.checkpoint import load_stage

            self._models = {stage: load_stage(self.workdir, stage)}  # one model in memory
        return self._models[stage]

    def stage_config(self, stage: str) -> ml_collections.ConfigDict:
        return ml_collections.ConfigDict(json.loads((self.workdir / stage / "config.json")
                                                    .read_text()))

    @property
    def limit(self) -> int | None:
        return int(self.c.limit) or None

    def builder(self, name: str, stage: str):
        """The registry's prepared `name` dataset, with the stage's data settings (shipped data
        dir, cache dir, skip_bad_records) where its config has them."""
        from gpt_jax.data import registry

        data = self.stage_config(stage).to_dict().get("data", {})
        root = data.get("cache_dir") or self.workdir / "data_cache"
        return registry.prepare(name, data_dir=data.get("dir") or None, cache_dir=root,
                                skip_bad_records=bool(data.get("skip_bad_records", False)))


# -- mmlu -----------------------------------------------------------------------------------------
def mmlu(ctx: Context, stage: str) -> dict[str, Any]:
    from gpt_jax.eval import mmlu as M

    shots = int(ctx.c.mmlu_shots)
    ident = stage_identity(ctx.workdir, stage)
    per_subject = {}
    subjects = list(M.questions(ctx.builder("mmlu", stage), ctx.limit))
    bar = progress(total=len(subjects), desc=f"eval {stage} mmlu", unit="subject",
                   min_interval=10.0, final_line=True)
    for subject, dev, qs in subjects:
        key = unit_key("mmlu", stage, ident, subject, shots, ctx.limit)
        per_subject[subject] = ctx.parts.get_or_run(key, lambda: M.score_subject(
            *ctx.model(stage), ctx.tokenizer, subject, dev, qs, shots))
        bar.update(1)
        bar.set_postfix(accuracy=f"{M.summarize(per_subject)['micro_accuracy']:.3f}")
    bar.close()
    out = M.summarize(per_subject)
    ctx.log(f"eval: {stage} mmlu micro accuracy {out['micro_accuracy']:.3f} over "
            f"{out['questions']} questions (chance {M.CHANCE})")
    return out


# -- bits per byte --------------------------------------------------------------------------------
def bpb(ctx: Context, stage: str) -> dict[str, Any]:
    """Bits per byte of each pretraining source's held-out text (the sources the pretrain stage
    was trained on, weight > 0), and over all of them by bytes."""
    from gpt_jax.data import registry
    from gpt_jax.eval.loglik import text_nats

    pretrain = ctx.workdir / "pretrain" / "config.json"
    data = ctx.stage_config("pretrain").to_dict().get("data", {}) if pretrain.exists() else {}
    weights = data.get("pretrain_weights")
    if not weights:
        ctx.log(f"eval: {stage} bpb skipped: no pretrain/config.json with data.pretrain_weights")
        return None
    ident = stage_identity(ctx.workdir, stage)
    cap = int(ctx.c.bpb_max_bytes)
    per_source = {}
    for source in sorted(n for n, w in weights.items() if w > 0):
        def score(source=source):
            texts, size = [], 0
            for rec in registry.read_records(ctx.builder(source, "pretrain"), "heldout"):
                if size >= cap or (ctx.limit and len(texts) >= ctx.limit):
                    break
                text = rec["text"].encode("utf-8")[: cap - size].decode("utf-8", "ignore")
                texts.append(text)
                size += len(text.encode("utf-8"))
            tok = ctx.tokenizer
            config, params = ctx.model(stage)
            nats = text_nats(params, config, [tok.encode(t) for t in texts], tok.eos_id,
                             pad_id=tok.pad_id)
            return {"nats": nats, "bytes": size, "documents": len(texts)}

        key = unit_key("bpb", stage, ident, source, cap, ctx.limit)
        per_source[source] = ctx.parts.get_or_run(key, score)
    out = {s: r["nats"] / math.log(2) / max(r["bytes"], 1) for s, r in per_source.items()}
    nats, size = (sum(r[k] for r in per_source.values()) for k in ("nats", "bytes"))
    ctx.log(f"eval: {stage} bpb " + ", ".join(f"{s} {v:.3f}" for s, v in out.items()))
    return {"all": nats / math.log(2) / max(size, 1), "per_source": out,
            "bytes": {s: r["bytes"] for s, r in per_source.items()}}


# -- arithmetic (the compare stage's evaluation) ---------------------------------------------------
def arith(ctx: Context, stage: str) -> dict[str, Any]:
    from gpt_jax.compare import compare_config, eval_sets
    from gpt_jax.eval.arith import PolicyEval, evaluate

    source = ctx.workdir / "sft" / "config.json"
    if not source.exists():
        return None
    config = ctx.stage_config("sft")
    c = compare_config()
    if ctx.limit:
        c.n_per_level = ctx.limit
        c.pass_k_problems = min(int(c.pass_k_problems), 3 * ctx.limit)
    c.pass_k_samples = int(ctx.c.arith_pass_k_samples)
    ident = stage_identity(ctx.workdir, stage)
    key = unit_key("arith", stage, ident, c.to_dict(), config.tasks.to_dict())

    def score():
        task, sets, demos = eval_sets(config, str(ctx.workdir), c)
        name = "base" if stage == "pretrain" else stage
        out = evaluate(PolicyEval(name, *ctx.model(stage), ctx.tokenizer, demos, c), sets, c)
        return {k: out[k] for k in ("accuracy", "pass_at_k", "format_valid")}

    result = ctx.parts.get_or_run(key, score)
    ctx.log(f"eval: {stage} arith accuracy {result['accuracy']}")
    return result


# -- the reward model ------------------------------------------------------------------------------
def rm(ctx: Context) -> dict[str, Any] | None:
    """Pairwise accuracy of the reward model on the held-out labeler comparisons (against gold
    and against the labeler) and on each human set's held-out pairs."""
    from gpt_jax.data import tasks_data
    from gpt_jax.metrics import read_summary
    from gpt_jax.train import reward

    stage_dir = ctx.workdir / reward.STAGE
    if read_summary(stage_dir) is None:
        return None
    config = ctx.stage_config(reward.STAGE)
    rcfg, seq_len = config.reward, int(config.train.seq_len)
    key = unit_key("rm", stage_identity(ctx.workdir, reward.STAGE), ctx.limit)

    def score():
        tok = ctx.tokenizer
        task = tasks_data.make_task(config.tasks, config, str(ctx.workdir))
        rows = [json.loads(x) for x in (stage_dir / "comparisons.jsonl").read_text().splitlines()
                if x.strip()]
        held = reward.comparison_examples([r for r in rows if r["split"] == "heldout"], tok,
                                          task, seq_len)
        human = {n: h for n, (_, h) in reward.human_examples(config, tok, str(ctx.workdir),
                                                              seq_len).items()}
        limit = ctx.limit or int(rcfg.human_eval_max_prompts)
        model_config, params = reward.load_reward_model(str(ctx.workdir))
        scorer = reward.make_scorer(model_config, None, int(rcfg.score_batch), seq_len)
        return reward.evaluate_sets(params, scorer, held[:limit] if ctx.limit else held, human,
                                    limit)

    result = ctx.parts.get_or_run(key, score)
    ctx.log("eval: reward model accuracy " + ", ".join(
        f"{k} {v['accuracy']:.3f}" for k, v in result.items()))
    return result


# -- generative: GSM8K and the AlpacaEval win rate (gpt_jax.eval.generative) ----------------------
def _generation_settings(ctx: Context):
    from gpt_jax.compare import compare_config

    return compare_config(max_new_tokens=int(ctx.c.gen_max_new_tokens),
                          few_shot=int(ctx.c.gsm8k_shots))


def gsm8k(ctx: Context, stage: str) -> dict[str, Any]:
    from gpt_jax.eval import generative

    c = _generation_settings(ctx)
    key = unit_key("gsm8k", stage, stage_identity(ctx.workdir, stage), c.to_dict(), ctx.limit)
    result = ctx.parts.get_or_run(key, lambda: generative.gsm8k(ctx, stage, c))
    ctx.log(f"eval: {stage} gsm8k accuracy {result.get('accuracy'):.3f}, with the calculator "
            f"{result.get('accuracy_calc', float('nan')):.3f} ({result['problems']} problems)")
    return result


def winrate(ctx: Context, stage: str) -> dict[str, Any] | None:
    from gpt_jax.eval import generative
    from gpt_jax.eval.harness import CHAT_STAGES
    from gpt_jax.metrics import read_summary

    if stage not in CHAT_STAGES or read_summary(ctx.workdir / "reward") is None:
        return None
    c = _generation_settings(ctx)
    ref = str(ctx.c.winrate_reference)
    key = unit_key("winrate", stage, stage_identity(ctx.workdir, stage),
                   stage_identity(ctx.workdir, "reward"), c.to_dict(), ref, ctx.limit)
    result = ctx.parts.get_or_run(key, lambda: generative.winrate(ctx, stage, c, ref))
    ctx.log(f"eval: {stage} win rate against {ref} {result['win_rate']:.3f} (length-controlled "
            f"{result['length_controlled_win_rate']:.3f}; judge: the reward model)")
    return result
