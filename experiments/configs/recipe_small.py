"""The whole recipe at the "small" scale, for one GPU: a GPT-2-124M-class model (12 layers,
d=768, bf16 compute, f32 params) and a 32,768-id tokenizer on the shipped data.

python -m gpt_jax.main --config=experiments/configs/recipe_small.py --workdir=runs/small

Same stages, code paths and tasks as recipe_tiny.py; what changes is the model and the budgets:
pretraining sees 2,000 × 32 × 1,024 = 65.5M tokens (about four passes over the shipped
pretraining mixture), SFT 600 steps × 32 conversations, the reward model 2,048 labeler-ranked
prompts, PPO 200 steps × 64 prompts, FeedME best-of-8 on 2,048 prompts, the moderation
classifier 400 steps × 32 requests, and the retrieval-memory measurement (10,000 facts).
Learning rates follow
the usual ones at this size (GPT-2 124M pretraining 6e-4; SFT and RM around 3e-5; PPO 1e-5).
Any entry is overridable, e.g. --config.pretrain.train.total_steps=5000.
"""
import ml_collections

from gpt_jax import configs
from gpt_jax.recipe import load_experiment, pipeline_config

VOCAB_SIZE = 32_768  # a multiple of 128: the tied embedding / logits matmul tiles cleanly
MODEL = dict(family="gpt2", vocab_size=VOCAB_SIZE, max_seq_len=1024, n_layers=12, d_model=768,
             n_heads=12, dtype="bfloat16", param_dtype="float32", scan_layers=True)


def _scaled(name: str, *, optim=None, **train):
    config = load_experiment(f"{name}_tiny")
    if "model" in config:
        config.model = configs.model_config(**MODEL)
    if optim:
        config.optim.update(optim)
    if train:
        config.train.update(**train)
    return config


def get_config() -> ml_collections.ConfigDict:
    c = pipeline_config()
    c.tokenizer = load_experiment("tokenizer_tiny")
    c.tokenizer.tokenizer.update(vocab_size=VOCAB_SIZE, train_chars=30_000_000)
    # AdamW at GPT-2 small's learning rates (the tiny presets' Muon is measured at d=128 only)
    c.pretrain = _scaled("pretrain", optim=dict(name="adamw", learning_rate=6e-4, warmup_steps=200),
                         batch_size=32, seq_len=1024, total_steps=2000, log_every=20,
                         eval_every=250, eval_batches=16, checkpoint_every=500)
    c.sft = _scaled("sft", optim=dict(name="adamw", learning_rate=3e-5, warmup_steps=50),
                    batch_size=32, seq_len=512, total_steps=600, log_every=20, eval_every=200,
                    eval_batches=8, checkpoint_every=200)
    c.sft.samples.update(eval_problems=128)
    c.reward = _scaled("reward", optim=dict(learning_rate=3e-5, warmup_steps=20),
                       batch_size=32, seq_len=192, total_steps=400, log_every=20,
                       eval_every=100, eval_batches=8, checkpoint_every=100)
    c.reward.reward.update(train_prompts=2048, heldout_prompts=256, gen_batch=512,
                           score_batch=256)
    c.ppo = _scaled("ppo", optim=dict(learning_rate=1e-5, warmup_steps=10),
                    batch_size=64, total_steps=200, log_every=5, eval_every=25,
                    checkpoint_every=25)
    c.ppo.ppo.update(heldout_prompts=256, eval_samples=4)
    c.bon = _scaled("bon")
    c.bon.bon.update(n_values=[1, 2, 4, 8, 16, 32], n_max=32, heldout_prompts=256)
    c.feedme = _scaled("feedme", optim=dict(learning_rate=3e-5, warmup_steps=20),
                       batch_size=32, seq_len=192, total_steps=200, checkpoint_every=100)
    c.feedme.feedme.update(n=8, train_prompts=2048, heldout_prompts=256, eval_samples=4)
    c.compare = _scaled("compare")
    c.compare.compare.update(n_per_level=500, pass_k_problems=300, max_new_tokens=128)
    c.moderation = _scaled("moderation", optim=dict(learning_rate=3e-5, warmup_steps=20),
                           batch_size=32, seq_len=128, total_steps=400, log_every=20,
                           eval_every=100, eval_batches=8, checkpoint_every=100)
    c.memory = _scaled("memory")
    return c
