"""The report's sections for the policy stages: PPO (with the `ppo_seeds` table when it ran),
best-of-N, FeedME, and compare (accuracy per level x mode, pass@k, one answer per cell and the
answers side by side).

Why its own module: one section per stage, split from the supervised stages' sections
(gpt_jax/report/sections_train.py) so each file stays short; each function takes
(RunFiles, figure dir) and returns Markdown lines, as gpt_jax.report.SECTIONS expects.
"""
from __future__ import annotations

from pathlib import Path

from gpt_jax import report_plots as plots
from gpt_jax.report.runfiles import (SIDE_BY_SIDE_PROMPTS, RunFiles, escape_cell, fmt, get,
                                     image, table)


def ppo_section(run: RunFiles, fig_dir: Path) -> list[str]:
    s = run.summary("ppo")
    keys = ("gold_reward", "rm_reward", "accuracy", "kl")
    lines = table(["policy", *keys], [
        ["SFT (start)", *[fmt(get(s, f"sft.{k}")) for k in keys[:3]], fmt(0.0)],
        ["PPO (end)", *[fmt(get(s, f"ppo.{k}")) for k in keys]],
    ])
    lines += ["", *table(["", "value"], [
        ["steps", fmt(s.get("steps"))],
        ["gold gain over SFT", fmt(s.get("gold_gain"))],
        ["KL coefficient at the end (adaptive)",
         f"{fmt(s.get('beta_final'))} ({fmt(s.get('adaptive_kl'))})"],
        ["rollout / update seconds per step",
         f"{fmt(s.get('rollout_seconds_per_step'), 2)} / "
         f"{fmt(s.get('update_seconds_per_step'), 2)}"],
    ])]
    seeds = run.summary("ppo_seeds") or {}  # the multi-seed acceptance run, when it was made
    per_seed = [r for r in (s.get("per_seed") or seeds.get("per_seed") or [])
                if isinstance(r, dict)]
    if per_seed:
        lines += ["", "Over seeds (`ppo_seeds`): worst PPO seed vs best SFT seed, held-out gold "
                  f"{fmt(seeds.get('ppo_gold_min'))} vs {fmt(seeds.get('sft_gold_max'))}: "
                  f"{'passed' if seeds.get('passed') else 'not passed'}.", ""]
        lines += table(["seed", "SFT gold", "PPO gold", "SFT RM", "PPO RM", "KL"], [
            [fmt(r.get("seed")), fmt(r.get("sft_gold_reward")), fmt(r.get("ppo_gold_reward")),
             fmt(r.get("sft_rm_reward")), fmt(r.get("ppo_rm_reward")), fmt(r.get("kl"))]
            for r in per_seed])
    rows = run.metrics("ppo")
    ys = {"gold_reward": "gold reward", "rm_reward": "RM reward"}
    held_out = {"eval_gold_reward": "gold reward, held-out", "eval_rm_reward": "RM reward, held-out"}
    by_step = plots.plot_lines(fig_dir / "ppo_reward_vs_step.png", rows, "step",
                               {**ys, **held_out}, "PPO: reward vs step (rollouts, held-out)",
                               "step", "reward")
    evals = [r for r in rows if "eval_kl" in r]  # held-out evaluations, in step order
    by_kl = plots.plot_lines(fig_dir / "ppo_reward_vs_kl.png", evals, "eval_kl", held_out,
                             "PPO: held-out reward vs KL(policy || SFT)", "KL (nats)", "reward",
                             marker="o")
    return (lines + [""] + image(by_step, "PPO reward vs step", run.workdir)
            + image(by_kl, "PPO reward vs KL", run.workdir))


def bon_section(run: RunFiles, fig_dir: Path) -> list[str]:
    s = run.summary("bon")
    rows = [r for r in (s.get("table") or []) if isinstance(r, dict)]
    keys = ("n", "gold_reward", "rm_reward", "accuracy", "kl_analytic", "kl_empirical",
            "verifier_accuracy", "verifier_kl")
    lines = ["Best of n SFT samples by reward-model score (KL analytic = log n - (n-1)/n, an upper "
             "bound), and by the verifier (verifier_accuracy = pass@n; verifier_kl exact for a "
             "binary reward at each prompt's empirical success rate):", ""]
    lines += table(list(keys), [[fmt(r.get(k)) for k in keys] for r in rows]
                   or [["n/a"] * len(keys)])
    png = plots.plot_lines(fig_dir / "bon_reward_vs_kl.png", rows, "kl_analytic",
                           {"gold_reward": "gold reward", "rm_reward": "RM reward"},
                           "best-of-n: reward vs KL", "KL analytic (nats)", "reward", marker="o")
    return lines + [""] + image(png, "best-of-n reward vs KL", run.workdir)


def feedme_section(run: RunFiles, fig_dir: Path) -> list[str]:
    s = run.summary("feedme")
    keys = ("gold_reward", "rm_reward", "accuracy", "kl")
    lines = table(list(keys), [[fmt(s.get(k)) for k in keys]])
    lines += ["", *table(["", "value"], [
        ["SFT on the best of n samples, n", fmt(s.get("n"))],
        ["distilled samples", fmt(s.get("distilled"))],
        ["distilled gold / RM reward",
         f"{fmt(s.get('distilled_gold_reward'))} / {fmt(s.get('distilled_rm_reward'))}"],
        ["PPO at a similar KL", fmt(s.get("ppo_at_similar_kl"))],
        ["final train loss", fmt(s.get("final_train_loss"))],
    ])]
    png = plots.plot_loss_curves(fig_dir / "feedme_loss.png", run.metrics("feedme"),
                                 "FeedME loss")
    return lines + [""] + image(png, "FeedME loss", run.workdir)


def compare_section(run: RunFiles, fig_dir: Path) -> list[str]:
    s = run.summary("compare")
    models = s.get("models") if isinstance(s.get("models"), dict) else {}
    modes = ("direct", "cot", "calc", "calc_off")
    lines = [f"Greedy accuracy on {fmt(s.get('problems_per_level'))} held-out problems per level, "
             "the same problems in every mode (calc: the calculator runs inside decoding; "
             "calc_off: the same prompt with no tool attached).", ""]
    rows = [[name, level, *[fmt(get(m, f"accuracy.{level}.{mode}")) for mode in modes]]
            for name, m in models.items() for level in ("L1", "L2", "L3")]
    lines += table(["model", "level", *modes], rows or [["n/a"] * 6])
    ks = sorted({k for m in models.values() for k in (get(m, "pass_at_k") or {})}, key=int)
    keys = ("format_valid", "gold_reward", "rm_reward", "response_length", "distinct_1",
            "distinct_2", "sample_entropy")
    lines += ["", f"pass@k over {fmt(s.get('pass_k_samples'))} temperature-1 samples of "
              f"{fmt(s.get('pass_k_problems'))} problems ({s.get('pass_k_mode')} mode); gold and "
              "RM reward and length over the greedy cot answers (sample_entropy: mean -log p of "
              "the sampled tokens, nats).", ""]
    lines += table(["model", *[f"pass@{k}" for k in ks], *keys], [
        [name, *[fmt(get(m, f"pass_at_k.{k}")) for k in ks], *[fmt(get(m, k)) for k in keys]]
        for name, m in models.items()] or [["n/a"]])
    missing = s.get("missing") or []
    lines += ["", f"Missing models: {', '.join(missing) if missing else 'none'}.", ""]
    cells = {f"{lv} {mode}": {name: get(m, f"accuracy.{lv}.{mode}") for name, m in models.items()}
             for lv in ("L1", "L2", "L3") for mode in modes}
    png = plots.plot_bars(fig_dir / "compare_accuracy.png", cells,
                          "greedy accuracy by level and mode", "accuracy", figsize=(12, 4))
    lines += image(png, "compare accuracy", run.workdir)
    for name, m in models.items():
        examples = get(m, "examples") or {}
        if examples:
            lines += ["", f"**{name}: one answer per cell** (a calculator call reads "
                      "`expr = result`).", ""]
            lines += table(["cell", "question", "answer", "correct"], [
                [cell, escape_cell(str(get(e, "question", "")), 160),
                 escape_cell(str(get(e, "reply", ""))), fmt(get(e, "correct"))]
                for cell, e in examples.items()])
    lines.append("")
    for i, row in enumerate(run.samples("compare")[:SIDE_BY_SIDE_PROMPTS], 1):
        answers = row.get("answers") if isinstance(row.get("answers"), dict) else {}
        lines += [f"**Prompt {i}** ({row.get('level')}, cot). "
                  f"{escape_cell(str(row.get('prompt', '')), 400)} "
                  f"(reference answer: {fmt(row.get('reference'))})", ""]
        lines += table(["model", "gold", "RM", "answer"], [
            [name, fmt(get(a, "gold")), fmt(get(a, "rm")), escape_cell(str(get(a, "text", "")))]
            for name, a in answers.items()])
        lines.append("")
    return lines
