"""The report's sections on using the model: the moderation stage (the server's safety classifier)
against its TF-IDF + logistic-regression baseline on the same held-out split with its latency per
check, the retrieval memory (BM25 recall and speed, the SFT model's answers with and without the
retrieved facts), and LoRA-SFT against full SFT (when the workdir has a `lora_sft` stage)."""
from __future__ import annotations

from pathlib import Path

from gpt_jax import report_plots as plots
from gpt_jax.report.runfiles import RunFiles, escape_cell, fmt, get, image, table

METRICS = (("AUROC", "auroc"), ("precision", "precision"), ("recall", "recall"),
           ("FPR at 90% recall", "fpr_at_90_recall"), ("accuracy", "accuracy"))


def moderation_section(run: RunFiles, fig_dir: Path) -> list[str]:
    s = run.summary("moderation")
    held = get(s, "examples.heldout", {}) or {}
    lines = [f"A harmful-request classifier on the pretrained trunk (HH-RLHF red-team requests vs "
             f"SFT instructions and replies and the arithmetic task's questions and replies, "
             f"split by record id; threshold {fmt(s.get('threshold'))}), next to TF-IDF + "
             f"logistic regression on the same split. Held-out: {fmt(held.get('harmful'))} "
             f"harmful, {fmt(held.get('benign'))} benign.", ""]
    lines += table(["", "moderation model", "TF-IDF baseline"],
                   [[name, fmt(s.get(key)), fmt(s.get(f"baseline_{key}"))]
                    for name, key in METRICS])
    if by_source := s.get("flagged_by_source"):
        lines += ["", "Held-out texts flagged, per source (benign sources: false positives):", ""]
        lines += table(["source", "flagged"], [[escape_cell(k), fmt(v)]
                                               for k, v in by_source.items()])
    verdict = ("beats" if s.get("beats_baseline") else "does **not** beat")
    lines += ["", f"On AUROC the model {verdict} the baseline. Latency per single-text check "
                  f"(median, this host): {fmt(s.get('ms_per_check'))} ms. The server "
                  "(`python -m gpt_jax.serve`) checks the user's input before decoding and the "
                  "reply every 16 tokens, ending a flagged one with finish_reason "
                  "\"content_filter\".", ""]
    png = plots.plot_loss_curves(fig_dir / "moderation_loss.png", run.metrics("moderation"),
                                 "moderation classifier loss")
    return lines + image(png, "moderation loss", run.workdir)


def lora_section(run: RunFiles, fig_dir: Path) -> list[str]:
    s = run.summary("lora_sft")
    full = s.get("full_sft") or {}
    cfg = s.get("lora") or {}
    lines = [f"LoRA-SFT (`sft_lora_tiny.py`): SFT's data and evaluation, {fmt(s.get('steps'))} "
             f"steps (full SFT: {fmt(full.get('steps'))}), training rank-"
             f"{fmt(cfg.get('rank'))} adapters (alpha {cfg.get('alpha', 'n/a')}) on "
             f"{', '.join(cfg.get('targets') or []) or 'n/a'} of the frozen `{s.get('parent')}` "
             f"model, against the full SFT stage of this workdir"
             + (f"; the adapter kept is its mean over the last {cfg['average_steps']} steps"
                if int(cfg.get("average_steps") or 0) > 1 else "") + ".", ""]
    n = s.get("heldout_problems_per_level")
    lines += table(["", "LoRA-SFT", "full SFT", "LoRA / full"], [
        [f"held-out accuracy (greedy, mean of level x mode, {fmt(n)} problems per level)",
         fmt(s.get("heldout_accuracy_mean")), fmt(s.get("full_heldout_accuracy_mean")),
         fmt(s.get("accuracy_vs_full"))],
        ["held-out masked loss", fmt(s.get("heldout_masked_loss")),
         fmt(full.get("heldout_masked_loss")), fmt(s.get("loss_vs_full"))],
        ["tokens/s", fmt(s.get("tokens_per_sec"), 1), fmt(full.get("tokens_per_sec"), 1),
         fmt(s.get("tokens_per_sec_vs_full"))],
        ["optimizer state (bytes)", fmt(s.get("optimizer_bytes")),
         fmt(s.get("optimizer_bytes_full")), fmt(s.get("optimizer_memory_vs_full"))],
        ["trained params", fmt(s.get("trainable_params")), "all",
         fmt(s.get("trainable_fraction"))],
    ])
    ours, theirs = s.get("heldout_accuracy") or {}, s.get("full_heldout_accuracy") or {}
    if ours:
        lines += ["", "Per level and mode (LoRA-SFT / full SFT):", ""]
        modes = list(next(iter(ours.values())))
        lines += table(["level", *modes], [
            [level, *(f"{fmt(row.get(m))} / {fmt((theirs.get(level) or {}).get(m))}"
                      for m in modes)] for level, row in ours.items()])
    by_width = s.get("trainable_fraction_by_d_model") or {}
    if by_width:
        lines += ["", "The same adapter's share of the params on this model family widened "
                      "(same layers, vocabulary and head size; `gpt_jax/lora_size.py`):", ""]
        lines += table(["d_model", *by_width], [["trained params / model",
                                                 *(fmt(v) for v in by_width.values())]])
    if cfg.get("token_ids"):
        lines += ["", f"Also trained: the embedding rows and output columns of "
                      f"{len(cfg['token_ids'])} special tokens (as deltas, in the adapter)."]
    diff = s.get("merge_max_abs_diff")
    lines += ["", f"Adapter file: {fmt(s.get('adapter_bytes'))} bytes; merge then unmerge "
                  f"changes logits by at most {'n/a' if diff is None else f'{diff:.2e}'}.", ""]
    png = plots.plot_loss_curves(fig_dir / "lora_sft_loss.png", run.metrics("lora_sft"),
                                 "LoRA-SFT masked loss")
    return lines + image(png, "LoRA-SFT loss", run.workdir)


def memory_section(run: RunFiles, fig_dir: Path) -> list[str]:
    del fig_dir
    s = run.summary("memory")
    k = s.get("k")
    lines = [f"Retrieval memory (`gpt_jax/memory`): BM25 over {fmt(s.get('chunks'))} synthetic "
             f"facts (\"Mia Chen's locker number is 4821.\"), asked in other words (\"Which "
             f"locker does Mia Chen use?\"). The `{s.get('parent')}` model answers "
             f"{fmt(s.get('questions'))} held-out questions greedily, on the same checkpoint: "
             f"with the top {fmt(k)} hits between the retrieval tokens, without them, and with "
             "the fact given (its SFT task's own context, the fact among distractors). Right = "
             "the fact's value in the reply.", ""]
    lines += table(["retrieval", "value", "target"], [
        ["recall@5", fmt(s.get("recall_at_5")), ">= 0.9"],
        ["ms per query (median, single query)", fmt(s.get("query_ms")),
         "<= 5 over 10k chunks"],
        [f"questions whose fact is among the {fmt(k)} hits given", fmt(s.get("hit_rate")), ""],
    ])
    lines += [""] + table(["answer accuracy", "value"], [
        ["with retrieval", fmt(s.get("accuracy_with"))],
        ["without retrieval", fmt(s.get("accuracy_without"))],
        ["with the fact given", fmt(s.get("accuracy_gold_context"))],
    ])
    examples = s.get("examples") or []
    if examples:
        lines += ["", "Examples (held-out):", ""]
        lines += table(["question", "value", "with retrieval", "without"], [
            [escape_cell(e.get("question", "")), escape_cell(e.get("value", "")),
             escape_cell(e.get("with", "")), escape_cell(e.get("without", ""))]
            for e in examples])
    return lines
