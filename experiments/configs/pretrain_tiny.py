"""Pretraining, tiny preset: a 4-layer d=128 Llama-style model (RoPE, RMSNorm, SwiGLU, 4 heads),
a few minutes on 2 CPU cores, on text plus 20% arithmetic drills.

Why Llama-style: on drills alone (batch 32 x 128 tokens, lr 2e-3) it reached training loss 1.23
at step 100 and 1.12 at step 200, where the GPT-2-style model (learned positions, 2 heads) was
at 1.76 and 1.34: relative positions (RoPE) suit digit-by-digit arithmetic.

At this budget (1.2M tokens) a narrow model is the better use of the FLOPs: at step 100 of this
schedule d=128 reaches held-out loss 6.90 with 0.36x the FLOPs of d=256 (6.68); d=192 reaches
6.87 with 0.64x, and d=256 at half the batch 6.91 with 0.5x (docs/configs_and_presets.md,
"Choosing the tiny model").

python -m gpt_jax.main --config=experiments/configs/pretrain_tiny.py --workdir=runs/x
  (needs runs/x/tokenizer/tokenizer.json from tokenizer_tiny.py, or
   --config.train.data_source=synthetic for random tokens)
"""
import ml_collections

from gpt_jax import configs


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.stage = "pretrain"
    config.seed = 0
    config.model = configs.model_config(
        family="llama", vocab_size=8192, max_seq_len=256, n_layers=4, d_model=128, n_heads=4,
        scan_layers=False)  # unrolled: ~11% faster on CPU; scan pays off for deep models
    config.mesh = configs.mesh_config()
    config.optim = configs.optim_config(learning_rate=2e-3, warmup_steps=50)
    config.train = configs.train_config(batch_size=16, seq_len=256, total_steps=300,
                                        log_every=10, eval_every=100, eval_batches=8,
                                        checkpoint_every=100)
    config.distributed = configs.distributed_config()
    configs.attach_data(config)
    return config
