"""What the on-policy RL stages (PPO, GRPO) share around their updates: the models a run loads,
the task prompts, the held-out evaluation hook, the per-step sample log and scores, and saving
the final policy. Each stage keeps its own update, data source and summary.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import jax
import numpy as np

from gpt_jax import labeler
from gpt_jax import sharding as shd
from gpt_jax.checkpoint import Checkpointer, load_stage


@dataclasses.dataclass
class RLSetup:
    tokenizer: object
    mesh: object
    model_config: object
    sft_params: dict
    rm_config: object
    rm_params: dict
    stop_ids: tuple[int, int]


def load_models(config, workdir: str, reward_stage: str) -> RLSetup:
    """The tokenizer, the mesh, the parent (SFT) policy and the reward model of an RL run."""
    from gpt_jax.tokenizer import Tokenizer
    from gpt_jax.train.reward import load_reward_model

    tokenizer = Tokenizer.load(str(Path(workdir) / "tokenizer" / "tokenizer.json"))
    model_config, sft_params = load_stage(workdir, config.parent)
    rm_config, rm_params = load_reward_model(workdir, reward_stage)
    return RLSetup(tokenizer, shd.mesh_from_config(config.mesh), model_config, sft_params,
                   rm_config, rm_params, (tokenizer.token_id("assistant_end"), tokenizer.eos_id))


@dataclasses.dataclass
class RLPrompts:
    train_problems: list
    train_prompts: list
    held_problems: list
    held_prompts: list


def load_prompts(config, workdir: str, tokenizer, rc, batch: int, key: str) -> RLPrompts:
    """The task's training pool (`rc.train_prompts`) and held-out prompts (`rc.heldout_prompts`)
    in `config.tasks.rl_modes`, as chat prompt ids; `key` names the config section in errors."""
    from gpt_jax.data import tasks_data

    task, train = tasks_data.rl_problems(config, "train", workdir, n=int(rc.train_prompts))
    _, held = tasks_data.rl_problems(config, "heldout", workdir, n=int(rc.heldout_prompts))

    def ids(problems):
        return [tokenizer.render_for_completion(task.prompt_messages(p)) for p in problems]

    out = RLPrompts(train, ids(train), held, ids(held))
    if len(out.train_prompts) < batch:
        raise ValueError(f"{key}.train_prompts={len(out.train_prompts)} < train.batch_size={batch}")
    return out


def make_eval_hook(trainer, scorer, ref_params, prompts: RLPrompts, rows: int, samples: int,
                   seed: int, stage_dir: Path, source, timing: dict, policy=lambda p: p):
    """The loop's eval_hook: `ppo.evaluate` of the current policy on the held-out prompts. The
    step-0 result (the SFT model) goes to `source.sft_eval`, the latest to `timing["last_eval"]`,
    its time to `timing["eval"]`; `policy(params)` picks the policy out of the state's params."""
    from gpt_jax.train.ppo import _log_samples, evaluate

    def eval_hook(params, step: int) -> dict[str, float]:
        t0 = time.perf_counter()
        result, shown = evaluate(trainer, scorer, policy(params), ref_params, prompts.held_prompts,
                                 prompts.held_problems, rows, samples, seed)
        timing["eval"] += time.perf_counter() - t0
        if step == 0:
            source.sft_eval = result
        timing["last_eval"] = result
        _log_samples(stage_dir, step, "eval", shown)
        return {f"eval_{k}": v for k, v in result.items()}

    return eval_hook


def step_scores(stage_dir: Path, step: int, log_every: int, logged: int, b: dict) -> dict:
    """The scores of a step's samples (`b`: problems, texts, gold, rm) for its metrics row; every
    `log_every` steps the first `logged` samples also go to samples.jsonl."""
    from gpt_jax.train.ppo import _log_samples

    problems, texts, gold, rm = b["problems"], b["texts"], b["gold"], b["rm"]
    if step % max(log_every, 1) == 0:
        _log_samples(stage_dir, step, "train", [
            {"question": p.question, "response": t, "gold": float(g), "rm": float(r)}
            for p, t, g, r in list(zip(problems, texts, gold, rm))[:logged]])
    return {"rm_reward": float(rm.mean()), "gold_reward": float(gold.mean()),
            "accuracy": float(np.mean([labeler.is_correct(p, t) for p, t in zip(problems, texts)]))}


def policy_state_layout(model_config, tx, mesh, seed: int):
    """(abstract state, shardings) of a train state whose params are one GPT's (the policy
    alone: GRPO, DPO)."""
    import jax.numpy as jnp

    from gpt_jax.model import GPT
    from gpt_jax.train.state import state_shardings

    dummy = jnp.zeros((1, 8), jnp.int32)
    return state_shardings(lambda rng: GPT(model_config).init(rng, dummy)["params"], tx, mesh,
                           jax.random.key(seed))


def fresh_policy_state(params, tx, shardings):
    """A step-0 state on COPIES of `params` (the SFT policy): the steps donate their state, and
    the caller's params (the reference) must survive."""
    from gpt_jax.train.state import state_from_params

    return state_from_params(jax.device_put(params, shardings.params, may_alias=False), tx,
                             shardings)


def save_policy(stage_dir: Path, params, stage: str) -> None:
    """`<stage_dir>/final`: the policy's params, loadable as a GPT by checkpoint.load_stage."""
    final = Checkpointer(stage_dir / "final", max_to_keep=1, async_save=False)
    final.save(0, {"params": jax.device_get(params)}, meta={"stage": stage})
    final.close()
