"""The whole recipe in minutes, for tests and for checking an install: every stage of
recipe_tiny.py with the same code paths, on a 2-layer d=64 model, a 1,024-id tokenizer, a few
steps per stage and a few prompts (numbers are meaningless; that every stage runs, resumes and
reports is the point).

python -m gpt_jax.main --config=experiments/configs/recipe_smoke.py --workdir=runs/smoke
"""
import ml_collections

from gpt_jax.recipe import load_experiment, pipeline_config

MODEL = dict(vocab_size=1024, max_seq_len=128, n_layers=2, d_model=64, n_heads=4)


def _small(config, **train):
    if "model" in config:
        config.model.update(MODEL)
    if "data" in config:
        config.data.pretrain_weights = {"tiny_shakespeare": 1.0}
        config.data.sft_weights = {"identity": 0.5, "alpaca_en_demo": 0.5}
    if "train" in config:
        config.train.update(log_every=2, eval_batches=1, progress_bar=False, **train)
    if "tasks" in config:
        config.tasks.update(train_problems=200, heldout_problems=20)
        config.tasks.context.update(facts=400, heldout=8)
    return config


def get_config() -> ml_collections.ConfigDict:
    c = pipeline_config()
    c.tokenizer = load_experiment("tokenizer_tiny")
    c.tokenizer.tokenizer.update(vocab_size=1024, train_chars=300_000, eval_chars=20_000)
    c.tokenizer.data.pretrain_weights = {"tiny_shakespeare": 0.5, "chinese_poetry": 0.5}
    c.tokenizer.tokenizer.source_weights = {"tiny_shakespeare": 0.7, "chinese_poetry": 0.3}
    c.tokenizer.tokenizer.eval_sources_en = "tiny_shakespeare"
    c.pretrain = _small(load_experiment("pretrain_tiny"), batch_size=8, seq_len=64,
                        total_steps=6, eval_every=3, checkpoint_every=3)
    c.sft = _small(load_experiment("sft_tiny"), batch_size=8, seq_len=96, total_steps=4,
                   eval_every=2, checkpoint_every=2)
    c.sft.samples.update(eval_problems=4, max_new_tokens=12)
    c.reward = _small(load_experiment("reward_tiny"), batch_size=8, seq_len=48, total_steps=3,
                      eval_every=3, checkpoint_every=3)
    c.reward.reward.update(k=3, train_prompts=8, heldout_prompts=8, max_new_tokens=12,
                           gen_batch=32, human_eval_max_prompts=4, bias_demos=6, score_batch=16)
    c.ppo = _small(load_experiment("ppo_tiny"), batch_size=8, seq_len=80, total_steps=4,
                   eval_every=2, checkpoint_every=2)
    c.ppo.ppo.update(max_prompt_len=64, max_new_tokens=16, train_prompts=64, heldout_prompts=4)
    c.bon = _small(load_experiment("bon_tiny"))
    c.bon.bon.update(n_values=[1, 2, 4], n_max=4, heldout_prompts=4, max_prompt_len=64,
                     max_new_tokens=16, gen_batch=16)
    c.feedme = _small(load_experiment("feedme_tiny"), batch_size=8, seq_len=96, total_steps=2,
                      checkpoint_every=2)
    c.feedme.feedme.update(n=2, train_prompts=8, heldout_prompts=4, max_prompt_len=64,
                           max_new_tokens=16, gen_batch=16, eval_batch=8)
    c.compare = _small(load_experiment("compare_tiny"))
    c.compare.compare.update(n_per_level=4, pass_k="1,2", pass_k_problems=4, pass_k_samples=2,
                             max_new_tokens=12)
    c.moderation = _small(load_experiment("moderation_tiny"), batch_size=8, seq_len=48,
                          total_steps=3, eval_every=3, checkpoint_every=3)
    c.moderation.moderation.update(latency_checks=4)
    c.memory = _small(load_experiment("memory_tiny"))
    c.memory.memory.update(queries=40, max_new_tokens=12, examples=2)
    return c
