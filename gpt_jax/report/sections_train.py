"""The report's sections for the supervised stages: tokenizer, pretraining, SFT and the reward
model (each a table from the stage's summary.json, plus its loss curve from metrics.jsonl).

Why its own module: one section per stage, split from the RLHF and compare sections
(gpt_jax/report/sections_rlhf.py) so each file stays short; each function takes
(RunFiles, figure dir) and returns Markdown lines, as gpt_jax.report.SECTIONS expects.
"""
from __future__ import annotations

from pathlib import Path

from gpt_jax import report_plots as plots
from gpt_jax.report.runfiles import RunFiles, fmt, get, image, table


# -- stage sections ------------------------------------------------------------------------------
def tokenizer_section(run: RunFiles, fig_dir: Path) -> list[str]:
    del fig_dir
    s = run.summary("tokenizer")
    lines = table(["", "value"], [
        ["vocab size", fmt(s.get("vocab_size"))],
        ["bytes/token, held-out English", fmt(s.get("bytes_per_token_en"))],
        ["bytes/token, held-out Chinese", fmt(s.get("bytes_per_token_zh"))],
        ["training characters", fmt(s.get("train_chars"))],
        ["train seconds", fmt(s.get("train_seconds"), 1)],
        ["tiktoken fast path exact", fmt(s.get("fast_path_exact"))],
        ["hash", fmt(s.get("tokenizer_hash"))],
    ])
    by_source = s.get("train_chars_by_source")
    if isinstance(by_source, dict) and by_source:
        lines += ["", *table(["source", "training characters"],
                             [[k, fmt(v)] for k, v in by_source.items()])]
    return lines


def pretrain_section(run: RunFiles, fig_dir: Path) -> list[str]:
    s = run.summary("pretrain")
    lines = table(["", "value"], [
        ["parameters", fmt(s.get("num_params"))],
        ["steps", fmt(s.get("steps"))],
        ["tokens seen", fmt(s.get("tokens_seen"))],
        ["final train loss (nats/token)", fmt(s.get("final_train_loss"))],
        ["final eval loss (nats/token)", fmt(s.get("final_eval_loss"))],
        ["eval bits per byte", fmt(s.get("eval_bits_per_byte"))],
        ["tokens/s", fmt(s.get("tokens_per_sec"), 0)],
        ["MFU", fmt(s.get("mfu"))],
        ["compile seconds", fmt(s.get("compile_seconds"), 1)],
        ["mesh", fmt(s.get("mesh"))],
    ])
    by_source = s.get("tokens_by_source")
    if isinstance(by_source, dict) and by_source:
        lines += ["", *table(["source", "tokens"], [[k, fmt(v)] for k, v in by_source.items()])]
    png = plots.plot_loss_curves(fig_dir / "pretrain_loss.png", run.metrics("pretrain"),
                                 "pretraining loss")
    return lines + [""] + image(png, "pretraining loss", run.workdir)


def sft_section(run: RunFiles, fig_dir: Path) -> list[str]:
    s = run.summary("sft")
    lines = table(["", "value"], [
        ["steps", fmt(s.get("steps"))],
        ["final train loss", fmt(s.get("final_train_loss"))],
        ["held-out masked loss (nats/token)", fmt(s.get("heldout_masked_loss"))],
        ["held-out assistant tokens", fmt(s.get("heldout_masked_tokens"), 0)],
        ["task", fmt(s.get("task"))],
        ["task held-out accuracy", fmt(s.get("task_heldout_accuracy"))],
        ["task held-out gold score", fmt(s.get("task_heldout_gold_score"))],
        ["task problems evaluated", fmt(s.get("task_eval_problems"))],
        ["tokens/s", fmt(s.get("tokens_per_sec"), 0)],
    ])
    weights = s.get("mixture_weights")
    if isinstance(weights, dict) and weights:
        lines += ["", "Mixture: " + ", ".join(f"{k} {fmt(v, 3)}" for k, v in weights.items())]
    png = plots.plot_loss_curves(fig_dir / "sft_loss.png", run.metrics("sft"), "SFT loss")
    return lines + [""] + image(png, "SFT loss", run.workdir)


def reward_section(run: RunFiles, fig_dir: Path) -> list[str]:
    s = run.summary("reward")
    accuracies = s.get("heldout_accuracy") if isinstance(s.get("heldout_accuracy"), dict) else {}
    rows = [[name, fmt(get(row, "pairs")), fmt(get(row, "accuracy")),
             fmt(get(row, "length_baseline"))] for name, row in accuracies.items()]
    lines = ["Held-out pairwise accuracy (labeler_vs_gold: against the noise-free gold order; "
             "labeler_vs_labeler: against the noisy labeler; the rest: human sets against the "
             "human order), next to \"prefer the longer response\" on the same pairs:", ""]
    lines += table(["set", "pairs", "RM accuracy", "length baseline"], rows or [["n/a"] * 4])
    lines += ["", *table(["", "value"], [
        ["K (responses per prompt)", fmt(s.get("k"))],
        ["labeler-gold agreement", fmt(s.get("labeler_gold_agreement"))],
        ["labeler flip rate", fmt(s.get("labeler_flip_rate"))],
        ["final train loss / accuracy",
         f"{fmt(s.get('final_train_loss'))} / {fmt(s.get('final_train_accuracy'))}"],
        ["held-out labeler loss", fmt(s.get("heldout_labeler_loss"))],
        ["bias offset", fmt(s.get("bias_offset"))],
    ])]
    png = plots.plot_loss_curves(fig_dir / "reward_loss.png", run.metrics("reward"),
                                 "reward model ranking loss")
    return lines + [""] + image(png, "reward model loss", run.workdir)
