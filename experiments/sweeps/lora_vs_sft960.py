"""LoRA-SFT against the 960-step full SFT that `make run` trains: AdamW and Muon on the adapter,
SFT's steps and twice them (rank 32, alpha 64, every projection + the special tokens' rows); then,
with Muon, rank 64, LoRA+ (B's step 4x) and the digits' rows trained too; then every norm's scale
trained too (the preset since), alone, with the digits' rows, at lr 4e-3 and 2e-3, at rank 16,
for twice the steps, and with the step decayed to zero (min_lr_ratio 0, against 0.1); then the
adapter's mean over the last 320 steps (average_steps), and over the last 640 of twice the steps
(the preset now).

Seed s of a point is compared with a parent whose full SFT trained with the same seed: seed 0 is
`make run`'s workdir; for seed 1, a workdir sharing its tokenizer and pretrain whose sft stage ran
`sft_tiny.py --config.seed=1` (seeds 2 and 3 likewise). The measured table is in docs/lora.md
("Against the 960-step full SFT").

python -m gpt_jax.sweep --config=experiments/configs/sft_lora_tiny.py \
    --sweep=experiments/sweeps/lora_vs_sft960.py --workdir=runs/sweep_lora960 --parent=runs/tiny \
    --metrics=accuracy_vs_full,heldout_accuracy_mean,full_heldout_accuracy_mean,heldout_masked_loss
"""


def get_sweep():
    def point(optimizer="adamw", lr=3e-3, steps=960, seed=0, alpha=64.0, rank=32,
              b_lr_ratio=1.0, train_tokens="special", norms=False, min_lr_ratio=0.1,
              average_steps=0):
        return {"config.optim.name": optimizer, "config.optim.learning_rate": lr,
                "config.lora.alpha": alpha, "config.train.total_steps": steps,
                "config.seed": seed, "config.lora.rank": rank,
                "config.lora.b_lr_ratio": b_lr_ratio, "config.lora.train_tokens": train_tokens,
                "config.lora.norms": norms, "config.optim.min_lr_ratio": min_lr_ratio,
                "config.lora.average_steps": average_steps}
    return [
        point(lr=1e-2, alpha=16.0),  # the earlier preset (AdamW)
        point(steps=1920),
        point(optimizer="muon"),  # the preset until the norms were trained too
        point(optimizer="muon", lr=5e-3, seed=1), point(optimizer="muon", lr=1e-2),
        point(optimizer="muon", steps=1920),
        *(point(optimizer="muon", rank=64, alpha=128.0, seed=s) for s in (0, 1)),
        point(optimizer="muon", b_lr_ratio=4.0, seed=1),
        *(point(optimizer="muon", train_tokens="special+digits", seed=s) for s in (0, 1)),
        *(point(optimizer="muon", norms=True, seed=s) for s in (0, 1)),  # the preset now
        *(point(optimizer="muon", norms=True, train_tokens="special+digits", seed=s)
          for s in (0, 1)),
        point(optimizer="muon", norms=True, lr=4e-3, seed=1),
        point(optimizer="muon", norms=True, rank=16, alpha=32.0, seed=1),
        *(point(optimizer="muon", norms=True, steps=1920, seed=s) for s in (0, 1)),
        point(optimizer="muon", norms=True, lr=2e-3, seed=1),
        point(optimizer="muon", norms=True, min_lr_ratio=0.0, seed=1),
        point(optimizer="muon", norms=True, seed=2),  # the preset, a third seed (its own sft)
        point(optimizer="muon", norms=True, steps=1920, seed=2),
        # the adapter's mean over the last 320 steps
        *(point(optimizer="muon", norms=True, average_steps=320, seed=s) for s in (0, 1, 2)),
        # twice the steps, the mean over the last 640: the preset now
        *(point(optimizer="muon", norms=True, steps=1920, average_steps=640, seed=s)
          for s in (0, 1, 2, 3)),
    ]
