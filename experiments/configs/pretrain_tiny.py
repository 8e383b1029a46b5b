"""Pretraining, tiny preset: a 4-layer d=128 Llama-style model (RoPE, RMSNorm, SwiGLU, 4 heads),
trained with Muon, a few minutes on 2 CPU cores, on text plus arithmetic drills (4/5 of the tokens).

Why Muon and so many drills: the arithmetic is what the tiny recipe shows, and copying the
question's digits into the column steps comes late and suddenly. On drills alone, with AdamW,
this model had not started at 2M drill tokens (worked probe 0.00); with Muon it was at 0.13 at
1.3M and 0.72 at 2M (experiments/drill_curve.py, docs/arithmetic.md "How fast drills are
learned"). So the preset takes 1,000 steps of 16 x 128 tokens with drills at weight 4.0 (4/5 of
them, 1.6M drill tokens): the drill probe after pretraining reads 0.56 worked / 0.25 plain, where
500 steps at 2/3 drills read 0.00 / 0.03. Twice the learning rate (4e-3) learns the drills
faster (alone: 0.945 at 2M tokens) and read 0.87 / 0.41 after pretraining, but downstream it was
mixed on one seed (SFT L1 cot 0.38 vs 0.49, L2 calc 0.31 vs 0.145, L3 calc 0.24 vs 0.285;
docs/arithmetic.md), so the preset keeps 2e-3. Batches of 16 x 128 rather than 16 x 256: per token,
smaller batches (more steps) learned the drills faster (62% at 2.56M tokens in batches of 16
against 50% at 3.07M in batches of 32, AdamW).

Why Llama-style: on drills alone (batch 32 x 128 tokens, lr 2e-3) it reached training loss 1.23
at step 100 and 1.12 at step 200, where the GPT-2-style model (learned positions, 2 heads) was
at 1.76 and 1.34: relative positions (RoPE) suit digit-by-digit arithmetic.

At a budget of 1.2M tokens a narrow model is the better use of the FLOPs: at step 100 of this
schedule d=128 reaches held-out loss 6.90 with 0.36x the FLOPs of d=256 (6.68); d=192 reaches
6.87 with 0.64x, and d=256 at half the batch 6.91 with 0.5x (docs/configs_and_presets.md,
"Choosing the tiny model").

python -m gpt_jax.main --config=experiments/configs/pretrain_tiny.py --workdir=runs/x
  (needs runs/x/tokenizer/tokenizer.json from tokenizer_tiny.py, or
   --config.train.data_source=synthetic for random tokens)
"""
import ml_collections

from gpt_jax import configs


STEPS = 1000
# Drills against the text weights (which sum to 1): 4.0 makes them 4/5 of the tokens, where the
# data default (0.25) makes them 20%. See the module docstring for why the tiny preset needs more.
DRILL_WEIGHT = 4.0


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.stage = "pretrain"
    config.seed = 0
    config.model = configs.model_config(
        family="llama", vocab_size=2048, max_seq_len=256, n_layers=4, d_model=128, n_heads=4,
        scan_layers=False)  # unrolled: ~11% faster on CPU; scan pays off for deep models
    config.mesh = configs.mesh_config()
    config.optim = configs.optim_config(name="muon", learning_rate=2e-3, warmup_steps=50)
    config.train = configs.train_config(batch_size=16, seq_len=128, total_steps=STEPS,
                                        log_every=25, eval_every=500, eval_batches=8,
                                        checkpoint_every=500)
    config.distributed = configs.distributed_config()
    configs.attach_data(config)
    config.data.pretrain_weights.arithmetic_drills = DRILL_WEIGHT
    return config
