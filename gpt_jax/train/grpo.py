"""Stage "grpo": GRPO on the task's prompts, rewarded by the verifier (the gold labeler's
correctness-first score) or by the reward model, with an optional k3 KL leash to the SFT model.

Why: PPO against a 1.4M-parameter reward model learns what the RM rewards, not correctness (it
drifts: docs/arithmetic.md). GRPO needs no value model and can take the verifier itself as the
reward, the setup of most small-scale verifiable-reward results (DeepSeekMath, nanochat's
chat_rl).

Each step: `train.batch_size` prompts from the training pool (a pure function of (seed, step), so
a resume continues exactly), `grpo.group_size` samples of each from the current policy at
`grpo.temperature` (the calculator runs inside decoding when the RL prompts include the calc
mode; its tokens are masked out of the loss), rewards, then one compiled `grpo_step`
(gpt_jax/train/grpo_step.py: group advantages, clipped ratio loss + kl_coef x k3).

Models: the policy starts from `<workdir>/<config.parent>` (SFT); the reference is the same
params, frozen; `<workdir>/<grpo.reward_stage>` (the RM) scores evaluations, and rollouts too
when `reward_source="model"`. The sampler, the scorer and the evaluation are PPO's
(`ppo_trainer.PPOTrainer.rollout`, `ppo.Scorer`, `ppo.evaluate`), so both stages are measured
the same way.

Evaluation (step 0 = the SFT model, every train.eval_every, and at the end): `eval_samples`
sampled responses per held-out prompt: gold and RM reward, accuracy, KL(policy || SFT).
Writes `<workdir>/<stage>/`: metrics.jsonl (+ TensorBoard), samples.jsonl, final/ (the policy,
loadable with checkpoint.load_stage), summary.json.
"""
from __future__ import annotations

import time
from typing import Any

import jax
import ml_collections
import numpy as np

from gpt_jax.metrics import write_summary
from gpt_jax.stages import begin_stage

STAGE = "grpo"


def grpo_config(**overrides) -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict({
        "reward_stage": "reward",     # the RM: evaluation scores (and rewards with "model")
        "reward_source": "gold",      # "gold" (the verifier) | "model" (the reward model)
        "group_size": 8,              # samples per prompt (train.batch_size prompts per step)
        "max_prompt_len": 48,
        "max_new_tokens": 40,
        "temperature": 1.0,           # sampling AND log-prob temperature
        "clip": 0.2,
        "kl_coef": 0.04,              # weight of the k3 KL to the SFT model (0 = no leash)
        "scale_by_std": False,        # advantages / group std (the paper) or not (Dr. GRPO)
        "aggregate": "seq_mean",      # "seq_mean" (the paper) | "token_mean" (DAPO)
        "epochs": 1,                  # passes over each step's samples
        "minibatches": 1,             # optimizer updates per pass
        "train_prompts": 4096,
        "heldout_prompts": 64,
        "eval_samples": 2,
        "samples_logged": 4,
    })
    cfg.update(overrides)
    return cfg


def _sampler_config(gc):
    """The PPO-shaped config PPOTrainer samples and scores with (no PPO update is ever compiled)."""
    from gpt_jax.train.ppo import ppo_config

    return ppo_config(max_prompt_len=int(gc.max_prompt_len), max_new_tokens=int(gc.max_new_tokens),
                      temperature=float(gc.temperature), epochs=int(gc.epochs),
                      minibatches=int(gc.minibatches))


class GroupRollouts:
    """GRPO's data source for train/loop.py: `next_for(state)` samples `group_size` responses to
    each of the step's prompts with the current policy and scores them."""

    def __init__(self, trainer, scorer, config, problems, prompts):
        self.trainer, self.scorer, self.config = trainer, scorer, config
        self.problems, self.prompts = problems, prompts
        self.step, self.sft_eval, self.seconds, self.started = 0, None, 0.0, 0.0

    def next_for(self, state) -> dict:
        from gpt_jax.train.ppo import rollout_seed, step_prompt_indices

        t0 = self.started = time.perf_counter()
        self.step += 1
        g, seed = int(self.config.grpo.group_size), self.config.seed
        idx = step_prompt_indices(seed, self.step, len(self.prompts),
                                  int(self.config.train.batch_size))
        problems = [self.problems[j] for j in idx for _ in range(g)]
        rollout, gen = self.trainer.rollout(state.params, [self.prompts[j] for j in idx
                                                           for _ in range(g)],
                                            rollout_seed(seed, self.step))
        texts = self.scorer.texts(gen)
        gold, rm = self.scorer.gold(problems, texts), self.scorer.rm(rollout)
        self.seconds += time.perf_counter() - t0
        rewards = gold if self.config.grpo.reward_source == "gold" else rm
        return {"rollout": rollout, "rewards": rewards, "problems": problems, "texts": texts,
                "gold": gold, "rm": rm}

    def get_state(self) -> dict:
        return {"step": self.step, "sft_eval": self.sft_eval}

    def set_state(self, data: dict) -> None:
        self.step, self.sft_eval = int(data["step"]), data["sft_eval"]


def run(config, workdir: str, stage: str = STAGE) -> dict[str, Any]:
    from gpt_jax.metrics import read_metrics
    from gpt_jax.train import rl_common
    from gpt_jax.train.grpo_step import GRPOHyper, make_grpo_step
    from gpt_jax.train.loop import Loop
    from gpt_jax.train.optim import make_optimizer
    from gpt_jax.train.ppo import Scorer, evaluate, maybe_use_calculator
    from gpt_jax.train.ppo_trainer import PPOTrainer

    stage_dir, done = begin_stage(config, workdir, stage, parent=config.parent)
    if done is not None:
        return done
    t_start = time.perf_counter()
    gc, tcfg = config.grpo, config.train
    if gc.reward_source not in ("gold", "model"):
        raise ValueError(f"grpo.reward_source={gc.reward_source!r}; expected 'gold' or 'model'")
    m = rl_common.load_models(config, workdir, gc.reward_stage)
    tokenizer, model_config = m.tokenizer, m.model_config
    steps = int(tcfg.total_steps)
    trainer = PPOTrainer(model_config, _sampler_config(gc), config.optim, steps, m.mesh,
                         tokenizer.pad_id, m.stop_ids, tokenizer.vocab_size, seed=config.seed)
    maybe_use_calculator(trainer, config, tokenizer)
    scorer = Scorer(trainer, tokenizer, m.rm_config, m.rm_params)
    hp = GRPOHyper(prompt_len=int(gc.max_prompt_len), group_size=int(gc.group_size),
                   temperature=float(gc.temperature), clip=float(gc.clip),
                   kl_coef=float(gc.kl_coef), scale_by_std=bool(gc.scale_by_std),
                   aggregate=str(gc.aggregate), epochs=int(gc.epochs),
                   minibatches=int(gc.minibatches), vocab_limit=trainer.hp.vocab_limit)
    tx, schedule = make_optimizer(config.optim, steps * hp.epochs * hp.minibatches)
    abstract_state, shardings = rl_common.policy_state_layout(model_config, tx, m.mesh,
                                                              config.seed)
    step_fn = jax.jit(make_grpo_step(model_config, tx, hp, m.mesh),
                      in_shardings=(shardings, shardings.params, None, None, None),
                      out_shardings=(shardings, None), donate_argnums=0)
    prompts = rl_common.load_prompts(config, workdir, tokenizer, gc, int(tcfg.batch_size), "grpo")
    ref_params = trainer.place_reference(m.sft_params)
    source = GroupRollouts(trainer, scorer, config, prompts.train_problems, prompts.train_prompts)
    rows = int(tcfg.batch_size) * hp.group_size
    eval_seed = config.seed * 7919 + 104_729
    timing = {"update": [], "eval": 0.0, "last_eval": None}
    eval_hook = rl_common.make_eval_hook(trainer, scorer, ref_params, prompts, rows,
                                         int(gc.eval_samples), eval_seed, stage_dir, source,
                                         timing)

    def train_step(state, b, rng):
        t1 = time.perf_counter()
        state, metrics = step_fn(state, ref_params, trainer.put(b["rollout"]),
                                 trainer.put(np.asarray(b["rewards"], np.float32)), rng)
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        timing["update"].append(time.perf_counter() - t1)
        return state, {
            **metrics,
            **rl_common.step_scores(stage_dir, source.step, tcfg.log_every, gc.samples_logged, b),
            "lr": float(schedule(int(state.step) - 1)),
            "step_seconds": time.perf_counter() - source.started}

    loop = Loop(
        stage_dir=str(stage_dir), train_cfg=tcfg, train_step=train_step, train_iter=source,
        put_batch=lambda b: b, abstract_state=abstract_state, state_shardings=shardings,
        eval_hook=eval_hook, meta={"stage": stage}, desc=stage, eval_at_start=True,
        log_all_rows=True, extra_jsonl=("samples.jsonl",),
        postfix=lambda r: {"loss": f"{r['loss']:.4f}", "gold": f"{r['gold_reward']:.3f}",
                           "kl": f"{r['kl']:.3f}"})

    result = loop.run(lambda: rl_common.fresh_policy_state(m.sft_params, tx, shardings),
                      jax.random.key(config.seed))
    state, sft_eval, last_eval = result.state, source.sft_eval, timing["last_eval"]
    if last_eval is None:  # no step ran here (resumed after the last one): evaluate now
        last_eval, _ = evaluate(trainer, scorer, state.params, ref_params, prompts.held_prompts,
                                prompts.held_problems, rows, int(gc.eval_samples), eval_seed)
    rl_common.save_policy(stage_dir, state.params, stage)
    updates = timing["update"]
    rows = read_metrics(stage_dir / "metrics.jsonl")  # every step's row, resumed runs included
    summary = {
        "stage": stage, "parent": config.parent, "reward_source": gc.reward_source,
        "reward_model": gc.reward_stage, "seed": config.seed, "group_size": hp.group_size,
        "prompts_per_step": int(tcfg.batch_size), "steps": steps,
        "heldout_prompts": len(prompts.held_prompts), "eval_samples": int(gc.eval_samples),
        "sft": sft_eval, "grpo": last_eval, "final_kl": last_eval["kl"],
        "gold_gain": last_eval["gold_reward"] - sft_eval["gold_reward"],
        "accuracy_gain": last_eval["accuracy"] - sft_eval["accuracy"],
        "dropped_groups": float(sum(r.get("dropped_groups", 0.0) for r in rows)),
        "groups": steps * int(tcfg.batch_size),
        "rollout_seconds_per_step": source.seconds / max(result.steps_run, 1),
        "update_seconds_per_step": float(np.mean(updates[1:])) if len(updates) > 1 else 0.0,
        "eval_seconds": timing["eval"],
        "wall_seconds": time.perf_counter() - t_start,
    }
    write_summary(stage_dir, summary)
    return summary
