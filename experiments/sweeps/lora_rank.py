"""LoRA-SFT against full SFT: rank, scale, learning rate, steps, and the trained special-token rows,
with AdamW on the adapter (the preset's optimizer then; it is Muon now: lora_vs_sft960.py).

Each point trains the lora_sft stage on the parent's pretrained model and scores it and the
parent's full SFT on the compare stage's held-out problems (`accuracy_vs_full`). The measured
table and what it shows are in docs/lora.md ("Measured"); it ran against a parent whose full SFT
trained 480 steps (`make run` before SFT went to 960: `--config.train.total_steps=480` on the
parent's sft stage reproduces that parent).

python -m gpt_jax.sweep --config=experiments/configs/sft_lora_tiny.py \
    --sweep=experiments/sweeps/lora_rank.py --workdir=runs/sweep_lora --parent=runs/tiny \
    --metrics=accuracy_vs_full,heldout_accuracy_mean,heldout_masked_loss,loss_vs_full,trainable_fraction,optimizer_memory_vs_full
"""


def get_sweep():
    def point(rank=8, alpha=16.0, lr=1e-2, steps=480, tokens="special", seed=0):
        return {"config.optim.name": "adamw", "config.lora.rank": rank, "config.lora.alpha": alpha,
                "config.optim.learning_rate": lr, "config.train.total_steps": steps,
                "config.lora.train_tokens": tokens, "config.seed": seed,
                # as the preset was then: no norms, the last step's adapter kept
                "config.lora.norms": False, "config.lora.average_steps": 0}
    return [
        point(lr=3e-3, tokens=""), point(lr=3e-3), point(), point(tokens=""), point(seed=1),
        point(lr=3e-2), point(steps=960),
        point(rank=32, alpha=64.0, lr=3e-3), point(rank=32), point(rank=32, steps=960),
        point(rank=64), point(rank=128, alpha=256.0, lr=3e-3),
    ]
