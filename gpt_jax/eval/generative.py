"""The harness's generative suites: GSM8K exact match, and a win rate on AlpacaEval's instructions.

- `gsm8k`: the base model answers few-shot ("Question: q\\nAnswer: <solution>\\n\\n" demos from
  GSM8K train, as many as fit); chat stages answer through the chat template, once without and
  once with the calculator running inside the reply. Greedy; the final number ("The answer is N"
  or "#### N", the tasks' one parser) must equal the reference. Decoding is the arithmetic
  evaluation's (`eval.arith.PolicyEval`), so stop rules, budgets and tool handling are shared.
- `winrate`: each chat stage answers the AlpacaEval instructions (greedy); the project's reward
  model scores every (instruction, answer) and (instruction, reference) ALONE, so the position
  of a pair cannot bias the judge; a win is our score above the reference's (ties count 1/2).
  The judge is a proxy (our reward model, trained on the tiny recipe's preferences), not GPT-4.
  Length-controlled win rate, after AlpacaEval 2: a logistic regression of the win on
  tanh(length difference / its std), read at a length difference of 0.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from gpt_jax.eval.arith import PolicyEval


class Gsm8kPolicy(PolicyEval):
    """`PolicyEval` with GSM8K's prompts (few-shot for the base model, the chat template else)."""

    def prompts(self, problems) -> list[list[int]]:
        from gpt_jax.seq_utils import fit_prompt
        from gpt_jax.tasks.base import prompt_messages

        tok = self.tok
        if self.name != "base":
            return [fit_prompt(tok.render_for_completion(prompt_messages(p)), self.room)
                    for p in problems]
        out = []
        for p in problems:
            demos = list(self.demos)
            while True:
                ids = [tok.eos_id]
                for d in demos:
                    ids += tok.encode(f"Question: {d.question}\nAnswer: {d.solution}\n\n")
                ids += tok.encode(f"Question: {p.question}\nAnswer:")
                if len(ids) <= self.room or not demos:
                    out.append(fit_prompt(ids, self.room))
                    break
                demos = demos[1:]
        return out


def gsm8k(ctx, stage: str, c) -> dict:
    """{"accuracy": ..., "accuracy_calc": ... (chat stages), "problems": n}."""
    from gpt_jax import labeler
    from gpt_jax.tasks.gsm8k import Gsm8kTask

    task = Gsm8kTask(data_dir=None, cache_dir=str(ctx.workdir / "data_cache"))
    problems = task.problems("heldout", ctx.limit, seed=0)
    demos = task.problems("train", int(c.few_shot), seed=0)
    name = "base" if stage == "pretrain" else stage
    config, params = ctx.model(stage)
    policy = Gsm8kPolicy(name, config, params, ctx.tokenizer, demos, c)
    out = {"problems": len(problems)}
    for key, tool in (("accuracy", False), ("accuracy_calc", True)):
        if tool and name == "base":
            continue
        answers = policy.answer(problems, tool=tool, temperature=0.0)
        out[key] = float(np.mean([labeler.is_correct(p, a[0]) for p, a in zip(problems, answers)]))
        out[f"examples{'_calc' if tool else ''}"] = [
            {"question": p.question[:200], "reply": a[0][:300], "reference": p.answer}
            for p, a in list(zip(problems, answers))[:2]]
    return out


# -- win rate -------------------------------------------------------------------------------------
def load_alpaca(data_dir: Path, reference: str, limit: int | None) -> list[dict]:
    path = Path(data_dir) / "eval" / "alpaca_eval" / f"{reference}.model_outputs.json"
    rows = json.loads(path.read_text())
    for i, r in enumerate(rows):
        if not isinstance(r, dict) or not {"instruction", "output"} <= set(r):
            raise ValueError(f"{path}: record {i} lacks instruction / output")
    return rows[:limit] if limit else rows


def length_controlled(wins: np.ndarray, len_diff: np.ndarray, iters: int = 50) -> float:
    """sigmoid(a) of the logistic fit win ~ a + b * tanh(len_diff / std(len_diff)) (Newton's
    method on the log-likelihood, a tiny ridge for separable data): the win rate the judge would
    give at equal lengths."""
    x = np.tanh(len_diff / (len_diff.std() + 1e-9))
    X = np.stack([np.ones_like(x), x], 1)
    w = np.zeros(2)
    for _ in range(iters):
        p = 1 / (1 + np.exp(-X @ w))
        grad = X.T @ (wins - p) - 1e-3 * w
        hess = (X * (p * (1 - p))[:, None]).T @ X + 1e-3 * np.eye(2)
        w += np.linalg.solve(hess, grad)
    return float(1 / (1 + np.exp(-w[0])))


def winrate(ctx, stage: str, c, reference: str) -> dict | None:
    from gpt_jax.compare import rm_scorer
    from gpt_jax.paths import resolve_data_dir
    from gpt_jax.sampling import SamplingConfig, generate
    from gpt_jax.seq_utils import fit_prompt as fit

    rows = load_alpaca(resolve_data_dir(None), reference, ctx.limit)
    tok = ctx.tokenizer

    class Instructions:  # the reward scorer's task interface: the instruction as a user turn
        @staticmethod
        def prompt_messages(p):
            return [{"role": "user", "content": p["instruction"]}]

    score = rm_scorer(str(ctx.workdir), tok, Instructions, int(c.score_batch))
    if score is None:
        return None
    config, params = ctx.model(stage)
    n_new = int(c.max_new_tokens)
    prompts = [fit(tok.render_for_completion(Instructions.prompt_messages(r)),
                   config.max_seq_len - n_new) for r in rows]
    stop = (tok.token_id("assistant_end"), tok.eos_id)
    texts = []
    for start in range(0, len(prompts), int(c.gen_batch)):
        gen = generate(params, config, prompts[start:start + int(c.gen_batch)],
                       SamplingConfig(temperature=0.0, max_new_tokens=n_new, stop_ids=stop),
                       pad_id=tok.pad_id, tokenizer=tok)
        texts += [tok.decode([t for t in gen.row(i) if t not in stop and t < tok.vocab_size])
                  for i in range(len(gen.lengths))]
    ours, refs = score(rows, texts), score(rows, [r["output"] for r in rows])
    wins = np.where(ours > refs, 1.0, np.where(ours == refs, 0.5, 0.0))
    len_diff = np.array([len(t) - len(r["output"]) for t, r in zip(texts, rows)], float)
    return {"win_rate": float(wins.mean()),
            "length_controlled_win_rate": length_controlled(wins, len_diff),
            "instructions": len(rows), "reference": reference,
            "mean_length": float(np.mean([len(t) for t in texts])),
            "reference_mean_length": float(np.mean([len(r["output"]) for r in rows])),
            "judge": "the project's reward model (a proxy, not GPT-4)",
            "examples": [{"instruction": r["instruction"][:200], "ours": t[:300]}
                         for r, t in list(zip(rows, texts))[:2]]}
