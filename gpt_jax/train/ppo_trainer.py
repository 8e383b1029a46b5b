"""The PPO machinery, independent of where rewards come from: rollouts with the jit'd sampler,
the compiled `ppo_step`, and per-sequence KL to the reference.

`PPOTrainer(model_config, ppo_cfg, optim_cfg, total_steps, mesh, pad_id, stop_ids)` owns the
optimizer, the sharded state layout and the compiled functions; the caller brings prompts (token
ids) and scores (the reward model's, the gold labeler's, or a toy function of the tokens), so the
same code runs the RLHF stage (gpt_jax/train/ppo.py) and the toy-reward test.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gpt_jax import sharding as shd
from gpt_jax.heads import RewardModel
from gpt_jax.model import GPT, GPTConfig
from gpt_jax.sampling import Generation, SamplingConfig, generate
from gpt_jax.seq_utils import fit_prompt
from gpt_jax.train.optim import make_optimizer
from gpt_jax.train.ppo_step import PPOHyper, make_ppo_step, response_logprobs
from gpt_jax.train.state import state_from_params, state_shardings


def hyper_from_config(pc, vocab_limit: int = 0) -> PPOHyper:
    return PPOHyper(
        prompt_len=int(pc.max_prompt_len), temperature=float(pc.temperature),
        gamma=float(pc.gamma), lam=float(pc.lam), clip=float(pc.clip),
        value_clip=float(pc.value_clip), vf_coef=float(pc.vf_coef), epochs=int(pc.epochs),
        minibatches=int(pc.minibatches), whiten_rewards=bool(pc.whiten_rewards),
        no_eos_penalty=float(pc.no_eos_penalty), ptx_coef=float(pc.ptx_coef),
        vocab_limit=int(vocab_limit))


class PPOTrainer:
    def __init__(self, model_config: GPTConfig, ppo_cfg, optim_cfg, total_steps: int, mesh,
                 pad_id: int, stop_ids: Sequence[int], vocab_limit: int = 0, seed: int = 0):
        if vocab_limit >= model_config.vocab_size:
            vocab_limit = 0
        self.model_config, self.pc, self.mesh = model_config, ppo_cfg, mesh
        self.pad_id, self.stop_ids = int(pad_id), tuple(int(s) for s in stop_ids)
        self.hp = hyper_from_config(ppo_cfg, vocab_limit)
        self.max_new_tokens = int(ppo_cfg.max_new_tokens)
        self.tool, self.tool_tokenizer = None, None  # see use_tool
        if self.hp.prompt_len + self.max_new_tokens > model_config.max_seq_len:
            raise ValueError(f"ppo.max_prompt_len + ppo.max_new_tokens = "
                             f"{self.hp.prompt_len + self.max_new_tokens} exceeds the model "
                             f"context of {model_config.max_seq_len}")
        n_updates = total_steps * self.hp.epochs * self.hp.minibatches
        self.tx, self.schedule = make_optimizer(optim_cfg, n_updates)
        dummy = jnp.zeros((1, 8), jnp.int32)

        def init_params(rng):
            return {"policy": GPT(model_config).init(rng, dummy)["params"],
                    "value": RewardModel(model_config, per_token=True).init(rng, dummy)["params"]}

        self.abstract_state, self.shardings = state_shardings(init_params, self.tx, mesh,
                                                              jax.random.key(seed))
        self.policy_shardings = self.shardings.params["policy"]
        self._step = jax.jit(make_ppo_step(model_config, self.tx, self.hp, mesh),
                             in_shardings=(self.shardings, self.policy_shardings, None, None,
                                           None, None),
                             out_shardings=(self.shardings, None), donate_argnums=0)
        policy, hp = GPT(model_config, mesh=mesh), self.hp

        def sequence_kl(params, ref_params, rollout):
            lp = response_logprobs(policy, params, rollout["tokens"], rollout["valid"], hp)
            ref = response_logprobs(policy, ref_params, rollout["tokens"], rollout["valid"], hp)
            return ((lp - ref) * rollout["response_mask"]).sum(1)

        self._kl = jax.jit(sequence_kl)
        self._processor = None
        if vocab_limit:
            from gpt_jax.train.sft import vocab_limit_processor

            self._processor = vocab_limit_processor(vocab_limit)

    # -- state ------------------------------------------------------------------------------------
    def init_state(self, policy_params, value_params):
        """A fresh state owning COPIES of the params (ppo_step donates the state, and jit would
        otherwise forward the caller's buffers, e.g. the reference's, into it)."""
        params = jax.device_put({"policy": policy_params, "value": value_params},
                                self.shardings.params, may_alias=False)
        return state_from_params(params, self.tx, self.shardings)

    def place_reference(self, params):
        return jax.device_put(params, self.policy_shardings, may_alias=False)

    def put(self, tree):
        """Host arrays -> batch-sharded device arrays (leading dim over data x fsdp)."""
        return jax.tree.map(
            lambda x: jax.device_put(np.asarray(x), shd.batch_sharding(self.mesh, np.ndim(x))),
            tree)

    # -- rollouts ---------------------------------------------------------------------------------
    def use_tool(self, tool, tokenizer) -> None:
        """Every later rollout runs `tool` (str -> str) on in-line calls (see `rollout`)."""
        self.tool, self.tool_tokenizer = tool, tokenizer

    def rollout(self, policy_params, prompts: Sequence[Sequence[int]], seed: int,
                temperature: float | None = None, tool=None,
                tokenizer=None) -> tuple[dict, Generation]:
        """Samples one response per prompt -> (host rollout dict, the Generation).

        With `tool` (str -> str, e.g. the calculator; needs `tokenizer`) calls run inside
        decoding; the tokens the tool wrote stay in `valid` (the policy reads them) but are 0 in
        `response_mask`, so the PPO loss, the KL penalty and the values skip them."""
        p, n = self.hp.prompt_len, self.max_new_tokens
        prompts = [fit_prompt(x, p) for x in prompts]
        tool, tokenizer = tool or self.tool, tokenizer or self.tool_tokenizer
        t = self.hp.temperature if temperature is None else temperature
        sampling = SamplingConfig(temperature=t, max_new_tokens=n, stop_ids=self.stop_ids,
                                  seed=int(seed))
        gen = generate(policy_params, self.model_config, prompts, sampling,
                       logit_processor=self._processor, pad_id=self.pad_id, tool=tool,
                       tokenizer=tokenizer)
        b = len(prompts)
        tokens = np.full((b, p + n), self.pad_id, np.int32)
        valid = np.zeros((b, p + n), bool)
        for i, ids in enumerate(prompts):
            tokens[i, p - len(ids):p], valid[i, p - len(ids):p] = ids, True
        tokens[:, p:] = gen.tokens
        in_reply = np.arange(n)[None, :] < gen.lengths[:, None]
        valid[:, p:] = in_reply
        response_mask = in_reply if gen.tool_mask is None else in_reply & ~gen.tool_mask
        rollout = {"tokens": tokens, "valid": valid, "response_mask": response_mask,
                   "finished": gen.finished.astype(bool)}
        return rollout, gen

    def response_ids(self, gen: Generation, i: int) -> list[int]:
        return [t for t in gen.row(i) if t not in self.stop_ids]

    def response_tool_mask(self, gen: Generation, i: int) -> list[int]:
        """1 where the tool wrote the token, per entry of `response_ids(gen, i)`."""
        row = gen.row(i)
        mask = [0] * len(row) if gen.tool_mask is None else gen.tool_mask[i, :len(row)].tolist()
        return [int(m) for t, m in zip(row, mask) if t not in self.stop_ids]

    # -- compiled steps ---------------------------------------------------------------------------
    def step(self, state, ref_params, rollout: dict, scores, beta: float, rng, ptx=None):
        batch = dict(rollout)
        if ptx is not None:
            batch["ptx"] = ptx
        return self._step(state, ref_params, self.put(batch),
                          self.put(np.asarray(scores, np.float32)), jnp.float32(beta), rng)

    def sequence_kl(self, params, ref_params, rollout: dict) -> np.ndarray:
        """sum_t log pi(y_t) - log pi_ref(y_t) per row (the empirical KL of each sample)."""
        return np.asarray(self._kl(params, ref_params, self.put(rollout)))
