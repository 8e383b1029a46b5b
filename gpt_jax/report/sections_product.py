"""The report's product section: the moderation stage (the server's safety classifier) against
its TF-IDF + logistic-regression baseline on the same held-out split, and its latency per check."""
from __future__ import annotations

from pathlib import Path

from gpt_jax import report_plots as plots
from gpt_jax.report.runfiles import RunFiles, fmt, get, image, table

METRICS = (("AUROC", "auroc"), ("precision", "precision"), ("recall", "recall"),
           ("FPR at 90% recall", "fpr_at_90_recall"), ("accuracy", "accuracy"))


def moderation_section(run: RunFiles, fig_dir: Path) -> list[str]:
    s = run.summary("moderation")
    held = get(s, "examples.heldout", {}) or {}
    lines = [f"A harmful-request classifier on the pretrained trunk (HH-RLHF red-team requests vs "
             f"SFT instructions, split by record id; threshold {fmt(s.get('threshold'))}), next "
             f"to TF-IDF + logistic regression on the same split. Held-out: "
             f"{fmt(held.get('harmful'))} harmful, {fmt(held.get('benign'))} benign.", ""]
    lines += table(["", "moderation model", "TF-IDF baseline"],
                   [[name, fmt(s.get(key)), fmt(s.get(f"baseline_{key}"))]
                    for name, key in METRICS])
    verdict = ("beats" if s.get("beats_baseline") else "does **not** beat")
    lines += ["", f"On AUROC the model {verdict} the baseline. Latency per single-text check "
                  f"(median, this host): {fmt(s.get('ms_per_check'))} ms. The server "
                  "(`python -m gpt_jax.serve`) checks the user's input before decoding and the "
                  "reply every 16 tokens, ending a flagged one with finish_reason "
                  "\"content_filter\".", ""]
    png = plots.plot_loss_curves(fig_dir / "moderation_loss.png", run.metrics("moderation"),
                                 "moderation classifier loss")
    return lines + image(png, "moderation loss", run.workdir)
