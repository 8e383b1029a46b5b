"""Stage 5, RLHF: PPO against the reward model with a per-token KL leash to the SFT model.

Models (InstructGPT's setup):
- policy: initialised from `<workdir>/<config.parent>` (SFT), trained;
- reference: the same SFT params, frozen; the per-token KL log pi(y_t) - log pi_ref(y_t) of the
  sampled tokens is the penalty (reward = RM score at the end token - beta * sum_t KL_t);
- reward model: `<workdir>/reward/final` (bias-shifted so SFT demonstrations score 0), frozen;
- value model: a SEPARATE trunk + per-token head, initialised from the reward model (its head
  already predicts the end-of-episode score, so early value estimates are informed). A shared
  trunk would halve the update cost but couples the value loss to the policy's features; the
  separate trunk is the InstructGPT choice and what the tiny preset measures.

Each PPO step: sample one response per prompt from the current policy at `ppo.temperature`
(the on-device sampler), score it with the RM (`ppo.reward_source="model"`; "gold" trains on the
labeler's gold score instead, an oracle upper bound), then one compiled `ppo_step`
(gpt_jax/train/ppo_step.py): log-probs recomputed at the same temperature, GAE (gamma, lambda),
whitened advantages, `epochs` x `minibatches` clipped updates (+ PPO-ptx when `ptx_coef` > 0).
Beta is fixed, or adapted towards `kl_target` (Ziegler et al.) when `adaptive_kl`.

Evaluation (step 0 = the SFT model, every train.eval_every, and at the end): one sampled
response (temperature `ppo.temperature`) per held-out prompt per `eval_samples`, scored by the RM
and by the gold labeler, with the empirical KL(policy || SFT) = mean over samples of
sum_t log pi / pi_ref. Resume: the train state, beta and the SFT evaluation are checkpointed;
rollout prompts and sampling seeds are functions of (seed, step), so a resumed run continues
exactly where it stopped.

Writes `<workdir>/<stage>/`: metrics.jsonl (+ TensorBoard), samples.jsonl, reward_vs_kl.png,
final/ (the policy params, loadable with checkpoint.load_stage), summary.json (keys: docs/rlhf.md).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from gpt_jax import labeler
from gpt_jax.metrics import write_summary
from gpt_jax.stages import begin_stage
from gpt_jax.train.ppo_trainer import PPOTrainer

STAGE = "ppo"


def ppo_config(**overrides) -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict({
        "reward_stage": "reward",     # <workdir>/<reward_stage>/final is the reward model
        "reward_source": "model",     # "model" (the RM) | "gold" (the labeler's gold score)
        "value_init": "reward",       # "reward": value trunk + head from the RM | "policy": SFT
        "max_prompt_len": 48,         # prompts are left-padded (or cut) to this many tokens
        "max_new_tokens": 40,
        "temperature": 1.0,           # sampling AND log-prob temperature
        "kl_coef": 0.05,              # beta (initial value when adaptive_kl)
        "adaptive_kl": False,
        "kl_target": 6.0,             # adaptive controller: target per-sequence KL (nats)
        "kl_horizon": 10000,          # adaptive controller: horizon in samples
        "no_eos_penalty": 1.0,        # subtracted from the score of responses with no end token
        "whiten_rewards": False,      # whiten per-token rewards (mean kept) before GAE
        "gamma": 1.0,
        "lam": 0.95,
        "clip": 0.2,                  # policy ratio clip
        "value_clip": 0.2,            # value clip around the rollout's values
        "vf_coef": 0.5,
        "epochs": 2,                  # passes over each rollout batch
        "minibatches": 2,             # optimizer updates per pass
        "ptx_coef": 0.0,              # PPO-ptx: weight of the pretraining loss (0 = off)
        "ptx_batch": 4,               # pretraining rows per minibatch
        "ptx_seq_len": 128,
        "train_prompts": 4096,        # pool of training task prompts
        "heldout_prompts": 64,        # held-out task prompts (evaluation)
        "eval_samples": 2,            # sampled responses per held-out prompt
        "samples_logged": 4,          # rollouts written to samples.jsonl per logged step
    })
    cfg.update(overrides)
    return cfg


# -- prompts and rewards --------------------------------------------------------------------------
def step_prompt_indices(seed: int, step: int, pool: int, batch: int) -> np.ndarray:
    """The training prompts of PPO step `step`: a pure function of (seed, step) (exact resume)."""
    return np.random.default_rng([seed, step]).choice(pool, size=batch, replace=False)


def rollout_seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step) % (2**31 - 1)


def maybe_use_calculator(trainer: PPOTrainer, config, tokenizer) -> None:
    """Rollouts run the calculator when the RL prompts include the task's calc mode."""
    modes = str(config.tasks.get("rl_modes", "") or "")
    if "calc" in [m.split(":")[0].strip() for m in modes.split(",")]:
        from gpt_jax.tools.calculator import calculate

        trainer.use_tool(calculate, tokenizer)


class Scorer:
    """RM scores (jit'd) and gold scores of rollouts of task problems."""

    def __init__(self, trainer: PPOTrainer, tokenizer, rm_config, rm_params):
        from gpt_jax.heads import score

        self.trainer, self.tokenizer = trainer, tokenizer
        # on the mesh like the value model (the same params tree), next to the batch-sharded rows
        self.rm_params = jax.device_put(rm_params, trainer.shardings.params["value"])
        self._rm = jax.jit(lambda p, tokens, valid: score(p, rm_config, tokens, valid=valid))

    def texts(self, gen) -> list[str]:
        """The replies as text; with a tool, calls and results read "expr = result"."""
        if self.trainer.tool is not None:
            from gpt_jax.eval.arith import visible_text

            return [visible_text(self.tokenizer, self.trainer.response_ids(gen, i))[0]
                    for i in range(len(gen.tokens))]
        return [self.tokenizer.decode(self.trainer.response_ids(gen, i))
                for i in range(len(gen.tokens))]

    def rm(self, rollout) -> np.ndarray:
        put = self.trainer.put
        return np.asarray(self._rm(self.rm_params, put(rollout["tokens"]), put(rollout["valid"])))

    @staticmethod
    def gold(problems, texts) -> np.ndarray:
        return labeler.gold_scores(problems, texts).astype(np.float32)


def evaluate(trainer: PPOTrainer, scorer: Scorer, policy_params, ref_params, prompts, problems,
             batch: int, samples: int, seed: int) -> tuple[dict[str, float], list[dict]]:
    """Mean gold / RM reward, accuracy, length and empirical KL over `samples` sampled responses
    per held-out prompt (fixed seeds: the same draws at every evaluation)."""
    rows_p = [p for p in prompts for _ in range(samples)]
    rows_q = [q for q in problems for _ in range(samples)]
    gold, rm, kl, length, correct, shown = [], [], [], [], [], []
    for start in range(0, len(rows_p), batch):
        chunk_p, chunk_q = rows_p[start:start + batch], rows_q[start:start + batch]
        n = len(chunk_p)
        chunk_p = chunk_p + [chunk_p[-1]] * (batch - n)  # fixed shapes: pad the last chunk
        rollout, gen = trainer.rollout(policy_params, chunk_p, seed + start)
        texts = scorer.texts(gen)[:n]
        gold.append(scorer.gold(chunk_q, texts))
        rm.append(scorer.rm(rollout)[:n])
        kl.append(trainer.sequence_kl(policy_params, ref_params, rollout)[:n])
        length.append(gen.lengths[:n])
        correct += [labeler.is_correct(q, t) for q, t in zip(chunk_q, texts)]
        if start == 0:
            shown = [{"question": q.question, "response": t, "gold": float(g)}
                     for q, t, g in zip(chunk_q[::samples][:4], texts[::samples][:4],
                                        gold[-1][::samples][:4])]
    cat = np.concatenate
    return {"gold_reward": float(cat(gold).mean()), "rm_reward": float(cat(rm).mean()),
            "kl": float(cat(kl).mean()), "accuracy": float(np.mean(correct)),
            "response_length": float(cat(length).mean()), "responses": len(rows_p)}, shown


# -- the stage ------------------------------------------------------------------------------------
def _value_params(pc, sft_params, rm_config, rm_params, model_config, seed: int):
    if pc.value_init == "reward":
        if rm_config != model_config:
            raise ValueError("ppo.value_init='reward' needs the reward model to have the policy's "
                             f"model config; got {rm_config} vs {model_config}")
        return rm_params
    if pc.value_init == "policy":
        import flax.linen as nn
        import jax.numpy as jnp

        from gpt_jax.heads import RewardModel

        head = nn.unbox(RewardModel(model_config, per_token=True).init(
            jax.random.key(seed), jnp.zeros((1, 8), jnp.int32))["params"]["head"])
        head = jax.tree.map(jnp.zeros_like, head)
        return {"trunk": sft_params, "head": head}
    raise ValueError(f"ppo.value_init={pc.value_init!r}; expected 'reward' or 'policy'")


def _ptx_iterator(config, tokenizer, workdir):
    from gpt_jax.data import pipeline

    pc = config.ppo
    return pipeline.make_pretrain_iterator(
        config, tokenizer, split="train", batch_size=pc.ptx_batch * pc.minibatches,
        seq_len=pc.ptx_seq_len, seed=config.seed, workdir=workdir)


def plot_reward_vs_kl(rows: list[dict], path: Path) -> None:
    """Gold and RM reward of the held-out evaluations against their KL to the SFT model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    evals = [r for r in rows if "eval_kl" in r]
    if not evals:
        return
    kl = [r["eval_kl"] for r in evals]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(kl, [r["eval_gold_reward"] for r in evals], "o-", label="gold (labeler)")
    ax.plot(kl, [r["eval_rm_reward"] for r in evals], "s--", label="proxy (reward model)")
    ax.set_xlabel("KL(policy || SFT), nats per response")
    ax.set_ylabel("mean reward, held-out prompts")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


class Rollouts:
    """PPO's data source for train/loop.py: each batch is a scored rollout of the CURRENT policy
    (the loop calls `next_for(state)`). Its state (the step, beta, the SFT evaluation, the
    pretraining iterator's position for PPO-ptx) is checkpointed with the train state, and the
    prompts and sampling seed of step k are functions of (seed, k): a resume continues exactly."""

    def __init__(self, trainer: PPOTrainer, scorer: Scorer, config, problems, prompts, ptx_iter):
        self.trainer, self.scorer, self.config = trainer, scorer, config
        self.problems, self.prompts, self.ptx_iter = problems, prompts, ptx_iter
        self.step, self.beta, self.sft_eval = 0, float(config.ppo.kl_coef), None
        self.seconds = 0.0  # rollout + scoring time of the steps run in this process
        self.started = 0.0  # perf_counter() when the current step's rollout began

    def next_for(self, state) -> dict:
        t0 = self.started = time.perf_counter()
        self.step += 1
        seed, batch = self.config.seed, int(self.config.train.batch_size)
        idx = step_prompt_indices(seed, self.step, len(self.prompts), batch)
        problems = [self.problems[j] for j in idx]
        rollout, gen = self.trainer.rollout(state.params["policy"], [self.prompts[j] for j in idx],
                                            rollout_seed(seed, self.step))
        texts = self.scorer.texts(gen)
        gold, rm = self.scorer.gold(problems, texts), self.scorer.rm(rollout)
        ptx = np.asarray(next(self.ptx_iter)["tokens"]) if self.ptx_iter is not None else None
        self.seconds += time.perf_counter() - t0
        return {"rollout": rollout, "scores": gold if self.config.ppo.reward_source == "gold" else rm,
                "ptx": ptx, "problems": problems, "texts": texts, "gold": gold, "rm": rm}

    def get_state(self) -> dict:
        out = {"step": self.step, "beta": self.beta, "sft_eval": self.sft_eval}
        if self.ptx_iter is not None:
            out["ptx"] = self.ptx_iter.get_state()
        return out

    def set_state(self, data: dict) -> None:
        self.step, self.beta, self.sft_eval = int(data["step"]), float(data["beta"]), data["sft_eval"]
        if self.ptx_iter is not None:
            self.ptx_iter.set_state(data["ptx"])


def run(config, workdir: str, stage: str = STAGE) -> dict[str, Any]:
    from gpt_jax.metrics import read_metrics
    from gpt_jax.train import rl_common
    from gpt_jax.train.loop import Loop

    stage_dir, done = begin_stage(config, workdir, stage, parent=config.parent)
    if done is not None:
        return done
    t_start = time.perf_counter()
    pc, tcfg = config.ppo, config.train
    if pc.reward_source not in ("model", "gold"):
        raise ValueError(f"ppo.reward_source={pc.reward_source!r}; expected 'model' or 'gold'")
    m = rl_common.load_models(config, workdir, pc.reward_stage)
    tokenizer, model_config, sft_params = m.tokenizer, m.model_config, m.sft_params
    rm_config, rm_params = m.rm_config, m.rm_params
    batch = int(tcfg.batch_size)
    trainer = PPOTrainer(model_config, pc, config.optim, int(tcfg.total_steps), m.mesh,
                         tokenizer.pad_id, m.stop_ids, tokenizer.vocab_size, seed=config.seed)
    maybe_use_calculator(trainer, config, tokenizer)
    scorer = Scorer(trainer, tokenizer, rm_config, rm_params)
    prompts = rl_common.load_prompts(config, workdir, tokenizer, pc, batch, "ppo")
    held_prompts, held_problems = prompts.held_prompts, prompts.held_problems
    ref_params = trainer.place_reference(sft_params)
    ptx_iter = _ptx_iterator(config, tokenizer, workdir) if pc.ptx_coef > 0 else None
    source = Rollouts(trainer, scorer, config, prompts.train_problems, prompts.train_prompts,
                      ptx_iter)
    eval_seed = config.seed * 7919 + 104_729
    timing = {"update": [], "eval": 0.0, "last_eval": None}
    eval_hook = rl_common.make_eval_hook(trainer, scorer, ref_params, prompts, batch,
                                         int(pc.eval_samples), eval_seed, stage_dir, source,
                                         timing, policy=lambda params: params["policy"])

    def train_step(state, b, rng):
        t1 = time.perf_counter()
        state, metrics = trainer.step(state, ref_params, b["rollout"], b["scores"], source.beta,
                                      rng, b["ptx"])
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        timing["update"].append(time.perf_counter() - t1)
        if pc.adaptive_kl and not metrics["nonfinite"]:
            source.beta = float(_update_beta(source.beta, metrics["kl"], batch, pc))
        return state, {
            **metrics,
            **rl_common.step_scores(stage_dir, source.step, tcfg.log_every, pc.samples_logged, b),
            "lr": float(trainer.schedule(int(state.step) - 1)),
            "step_seconds": time.perf_counter() - source.started}

    loop = Loop(
        stage_dir=str(stage_dir), train_cfg=tcfg, train_step=train_step, train_iter=source,
        put_batch=lambda b: b, abstract_state=trainer.abstract_state,
        state_shardings=trainer.shardings, eval_hook=eval_hook, meta={"stage": stage},
        desc=stage, eval_at_start=True, log_all_rows=True, extra_jsonl=("samples.jsonl",),
        postfix=lambda r: {"loss": f"{r['loss']:.4f}", "rm": f"{r['rm_reward']:.3f}",
                           "gold": f"{r['gold_reward']:.3f}", "kl": f"{r['kl']:.2f}"})
    value_init = lambda: _value_params(pc, sft_params, rm_config, rm_params,  # noqa: E731
                                       model_config, config.seed)
    result = loop.run(lambda: trainer.init_state(sft_params, value_init()),
                      jax.random.key(config.seed))
    state, sft_eval = result.state, source.sft_eval
    last_eval = timing["last_eval"]
    if last_eval is None:  # no step ran here (resumed after the last one): evaluate now
        last_eval, _ = evaluate(trainer, scorer, state.params["policy"], ref_params, held_prompts,
                                held_problems, batch, int(pc.eval_samples), eval_seed)
    rl_common.save_policy(stage_dir, state.params["policy"], stage)
    rows = read_metrics(stage_dir / "metrics.jsonl")
    plot_reward_vs_kl(rows, stage_dir / "reward_vs_kl.png")
    train_rows = [r for r in rows if "kl" in r]
    updates = timing["update"]
    summary = {
        "stage": stage,
        "parent": config.parent,
        "reward_model": pc.reward_stage,
        "reward_source": pc.reward_source,
        "seed": config.seed,
        "heldout_prompts": len(held_prompts),
        "eval_samples": int(pc.eval_samples),
        "sft": sft_eval,
        "ppo": last_eval,
        "final_kl": last_eval["kl"],
        "gold_gain": last_eval["gold_reward"] - sft_eval["gold_reward"],
        "beta_final": source.beta,
        "adaptive_kl": bool(pc.adaptive_kl),
        "train_kl_last": train_rows[-1]["kl"] if train_rows else None,
        "train_gold_reward_last": train_rows[-1]["gold_reward"] if train_rows else None,
        "rollout_batch": batch,
        "updates_per_step": int(pc.epochs * pc.minibatches),
        "steps": int(tcfg.total_steps),
        "rollout_seconds_per_step": source.seconds / max(result.steps_run, 1),
        "update_seconds_per_step": float(np.mean(updates[1:])) if len(updates) > 1 else 0.0,
        "first_update_seconds": updates[0] if updates else 0.0,
        "eval_seconds": timing["eval"],
        "wall_seconds": time.perf_counter() - t_start,
    }
    write_summary(stage_dir, summary)
    return summary


def _update_beta(beta, kl, n, pc):
    from gpt_jax.train.ppo_core import update_kl_coef

    return update_kl_coef(beta, kl, n, float(pc.kl_target), float(pc.kl_horizon))


def _log_samples(stage_dir: Path, step: int, kind: str, rows: list[dict]) -> None:
    with open(stage_dir / "samples.jsonl", "a") as f:
        for r in rows:
            f.write(json.dumps({"step": step, "kind": kind, **r}, ensure_ascii=False) + "\n")
