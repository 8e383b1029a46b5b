"""A hand-written workdir with every stage's summary.json / metrics.jsonl (no training), for the
report and notebook tests: each number below is asserted verbatim in tests/test_report.py."""
import json
from pathlib import Path

def _table(cot: float) -> dict:
    """A compare accuracy table: `cot` in the cot column, fixed offsets elsewhere."""
    return {lv: {"direct": cot / 2, "cot": cot, "calc": min(1.0, cot + 0.5), "calc_off": 0.0}
            for lv in ("L1", "L2", "L3")}


SUMMARIES = {
    "tokenizer": {"stage": "tokenizer", "vocab_size": 8192, "bytes_per_token_en": 3.1797,
                  "bytes_per_token_zh": 3.1222, "train_seconds": 8.89, "train_chars": 8000000,
                  "fast_path_exact": True, "tokenizer_hash": "7d9d35998bc93214",
                  "train_chars_by_source": {"gutenberg_en": 5600000, "chinese_poetry": 2400000}},
    "pretrain": {"stage": "pretrain", "final_train_loss": 6.1838, "final_eval_loss": 6.111,
                 "eval_bits_per_byte": 2.8056, "tokens_seen": 1228800, "tokens_per_sec": 2416.2,
                 "mfu": 0.48, "compile_seconds": 5.04, "wall_seconds": 512.5,
                 "num_params": 5322240, "steps": 300, "mesh": {"data": 1, "fsdp": 1, "tensor": 1}},
    "sft": {"stage": "sft", "final_train_loss": 4.734, "heldout_masked_loss": 5.2297,
            "heldout_masked_tokens": 4995.0, "task": "arithmetic", "task_heldout_accuracy": 0.125,
            "task_heldout_gold_score": 0.1875, "task_eval_problems": 32, "wall_seconds": 136.0,
            "steps": 120, "mixture_weights": {"lima": 0.5, "task:arithmetic": 0.5}},
    "reward": {"stage": "reward", "k": 4, "final_train_loss": 0.6456,
               "final_train_accuracy": 0.5333, "heldout_labeler_loss": 0.6139,
               "heldout_accuracy": {
                   "labeler_vs_gold": {"accuracy": 0.8225, "length_baseline": 0.4913,
                                       "pairs": 231},
                   "labeler_vs_labeler": {"accuracy": 0.697, "length_baseline": 0.4913,
                                          "pairs": 231},
                   "hh_rlhf_harmless_test": {"accuracy": 0.48, "length_baseline": 0.425,
                                             "pairs": 200},
                   "oasst_en_trees": {"accuracy": 0.5084, "length_baseline": 0.6844,
                                      "pairs": 179}},
               "labeler_gold_agreement": 0.7739, "labeler_flip_rate": 0.2595,
               "bias_offset": 0.5295, "wall_seconds": 116.9, "steps": 80},
    "ppo": {"stage": "ppo",
            "sft": {"gold_reward": 0.01, "rm_reward": 0.25, "accuracy": 0.0625},
            "ppo": {"gold_reward": 0.5, "rm_reward": 1.25, "accuracy": 0.4375, "kl": 3.2},
            "steps": 5, "gold_gain": 0.49, "beta_final": 0.04, "adaptive_kl": True,
            "wall_seconds": 300.0},
    "ppo_seeds": {"stage": "ppo_seeds", "seeds": [0, 1],
                  "per_seed": [{"seed": 0, "sft_gold_reward": 0.01, "ppo_gold_reward": 0.5,
                                "kl": 3.2},
                               {"seed": 1, "sft_gold_reward": 0.02, "ppo_gold_reward": 0.375,
                                "kl": 2.9}],
                  "sft_gold_max": 0.02, "ppo_gold_min": 0.375, "passed": True},
    "bon": {"stage": "bon", "table": [
        {"n": 1, "gold_reward": 0.01, "rm_reward": 0.0, "accuracy": 0.0625, "kl_analytic": 0.0,
         "kl_empirical": 0.0, "verifier_accuracy": 0.0625, "verifier_kl": 0.0},
        {"n": 4, "gold_reward": 0.125, "rm_reward": 0.75, "accuracy": 0.1875,
         "kl_analytic": 0.6363, "kl_empirical": 0.59, "verifier_accuracy": 0.25,
         "verifier_kl": 0.2},
        {"n": 16, "gold_reward": 0.25, "rm_reward": 1.5, "accuracy": 0.3125,
         "kl_analytic": 1.8351, "kl_empirical": 1.7, "verifier_accuracy": 0.5,
         "verifier_kl": 0.45}],
        "wall_seconds": 60.0},
    "feedme": {"stage": "feedme", "gold_reward": 0.3125, "rm_reward": 0.875, "accuracy": 0.25,
               "kl": 1.125, "n": 8, "distilled": 256, "distilled_gold_reward": 0.75,
               "wall_seconds": 90.0},
    "compare": {"stage": "compare", "task": "arithmetic", "problems_per_level": 2,
                "pass_k_problems": 2, "pass_k_samples": 4, "pass_k_mode": "cot",
                "models": {
                    "base": {"accuracy": _table(0.0), "pass_at_k": {"1": 0.0, "2": 0.0},
                             "format_valid": 0.0, "gold_reward": -0.0043, "rm_reward": 1.0366,
                             "response_length": 48.0, "distinct_1": 0.7854, "distinct_2": 0.9814,
                             "sample_entropy": 5.9984, "examples": {}},
                    "sft": {"accuracy": _table(0.25), "pass_at_k": {"1": 0.25, "2": 0.4167},
                            "format_valid": 0.96, "gold_reward": 0.0041, "rm_reward": 0.2668,
                            "response_length": 34.0625, "distinct_1": 0.3232,
                            "distinct_2": 0.6821, "sample_entropy": 2.6677,
                            "examples": {"L3/calc": {"question": "Tom has 12 boxes.",
                                                     "reply": "123 * 12 = 1476.\nThe answer is "
                                                              "1476.", "correct": True}}},
                    "ppo": {"accuracy": _table(0.5), "pass_at_k": {"1": 0.5, "2": 0.75},
                            "format_valid": 1.0, "gold_reward": 0.6, "rm_reward": 1.5,
                            "response_length": 20.5, "distinct_1": 0.21, "distinct_2": 0.33,
                            "sample_entropy": 0.75, "examples": {}}},
                "missing": ["feedme"], "wall_seconds": 35.4},
    "moderation": {"stage": "moderation", "auroc": 0.9902, "precision": 0.845, "recall": 0.972,
                   "fpr_at_90_recall": 0.019, "accuracy": 0.951, "baseline_auroc": 0.992,
                   "baseline_precision": 0.9, "baseline_recall": 0.88,
                   "baseline_fpr_at_90_recall": 0.02, "baseline_accuracy": 0.94,
                   "beats_baseline": False, "ms_per_check": 2.9, "threshold": 0.5,
                   "flagged_by_source": {"arithmetic:reply": 0.0, "lima": 0.184},
                   "examples": {"train": {"harmful": 800, "benign": 3000},
                                "heldout": {"harmful": 200, "benign": 750}},
                   "wall_seconds": 71.0, "steps": 120},
    "memory": {"stage": "memory", "parent": "sft", "chunks": 10000, "questions": 200, "k": 3,
               "min_score": 0.0, "recall_at_5": 0.998, "recall_queries": 500, "query_ms": 0.55,
               "query_ms_10k": 0.55, "index_build_s": 0.4, "accuracy_with": 0.615,
               "accuracy_without": 0.035, "accuracy_gold_context": 0.72, "hit_rate": 0.97,
               "examples": [{"question": "Which locker does Mia Chen use?",
                             "hits": ["Mia Chen's locker number is 4821."], "value": "4821",
                             "with": "Mia Chen's locker number is 4821.",
                             "without": "Mia Chen's locker number is 1234."}],
               "wall_seconds": 30.0},
}

SAMPLES = [
    {"id": "a", "level": "L1", "prompt": "Mia has 3 shells. She loses 1. How many shells does Mia have now?",
     "reference": "2", "answers": {
         "base": {"text": "2. 2. 2.", "gold": 0.0, "rm": 0.9},
         "sft": {"text": "3 - 1 = 2.\nThe answer is 2.", "gold": 1.3, "rm": 0.4},
         "ppo": {"text": "The answer is 2.", "gold": 1.05, "rm": 1.6}}},
    {"id": "b", "level": "L1", "prompt": "Tom has 5 coins. He finds 4 more. How many coins does Tom have now?",
     "reference": "9", "answers": {
         "base": {"text": "a | b", "gold": 0.0, "rm": 1.1},
         "sft": {"text": "5 + 4 = 8.\nThe answer is 8.", "gold": 0.05, "rm": 0.1},
         "ppo": {"text": "The answer is 9.", "gold": 1.05, "rm": 1.4}}},
]


def loss_rows(steps: int, eval_every: int, start: float) -> list[dict]:
    rows = []
    for step in range(1, steps + 1):
        rows.append({"step": step, "loss": start - 0.1 * step, "lr": 1e-3})
        if step % eval_every == 0:
            rows.append({"step": step, "eval_loss": start - 0.1 * step + 0.05})
    return rows


METRICS = {
    "pretrain": loss_rows(10, 5, 8.0),
    "sft": loss_rows(6, 3, 6.0),
    "reward": loss_rows(4, 2, 0.7),
    "ppo": [{"step": s, "gold_reward": 0.01 + 0.1 * s, "rm_reward": 0.25 + 0.2 * s,
             "kl": 0.6 * s, "loss": 1.0 / s} for s in range(1, 6)]
    + [{"step": 5, "eval_gold_reward": 0.5, "eval_rm_reward": 1.25, "eval_kl": 3.2}],
    "feedme": loss_rows(4, 2, 3.0),
    "moderation": loss_rows(4, 2, 0.7),
}


def write_run(workdir: Path, stages=None, recipe_seconds: dict | None = None) -> Path:
    """The synthetic run in `workdir` (only `stages`, default all); returns workdir."""
    stages = list(SUMMARIES) if stages is None else stages
    for stage in stages:
        d = workdir / stage
        d.mkdir(parents=True, exist_ok=True)
        (d / "summary.json").write_text(json.dumps(SUMMARIES[stage], indent=2))
        if stage in METRICS:
            (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in METRICS[stage]))
        if stage == "compare":
            (d / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in SAMPLES))
    if recipe_seconds is not None:
        (workdir / "recipe_summary.json").write_text(json.dumps({"seconds": recipe_seconds}))
    return workdir
