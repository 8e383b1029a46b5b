"""The report's post-training section from `recipe_seeds` (when the workdir has run it): the
claims with their per-seed outcome, the models side by side (mean ± sd over seeds), the matched-KL
table and figure, Gao et al.'s fits of the weak-RM PPO and of best-of-N, and the alignment tax
(bits per byte of held-out pretraining text)."""
from __future__ import annotations

import shutil
from pathlib import Path

from gpt_jax.report.runfiles import RunFiles, fmt, image, table

CLAIMS = {
    "grpo_beats_sft": "GRPO's greedy {level} {mode} accuracy >= SFT's + {margin} at KL <= {max_kl}",
    "rl_narrows": "pass@8 - pass@1 is smaller after GRPO than after SFT",
    "overoptimization": "PPO against the weak RM: gold rises, then peaks before the proxy does",
}


def pm(stat, digits: int = 3) -> str:
    """mean ± sd over seeds, or n/a."""
    if not stat:
        return "n/a"
    return f"{stat['mean']:.{digits}f} ± {stat['sd']:.{digits}f}"


def _claim_detail(name: str, c: dict) -> str:
    if name == "grpo_beats_sft":
        return "; ".join(f"seed {s['seed']}: {fmt(s.get('sft'), 3)} -> {fmt(s.get('grpo'), 3)} "
                         f"at KL {fmt(s.get('kl'), 2)}" for s in c["per_seed"])
    if name == "rl_narrows":
        return "; ".join(f"seed {s['seed']}: {fmt(s.get('sft_gap'), 3)} -> "
                         f"{fmt(s.get('rl_gap'), 3)}" for s in c["per_seed"])
    return "; ".join(f"seed {s['seed']}: gold {fmt(s.get('gold_start'), 3)} -> peak "
                     f"{fmt(s.get('gold_peak'), 3)} at step {s.get('gold_peak_step', 'n/a')} -> "
                     f"{fmt(s.get('gold_end'), 3)}; proxy peak at step "
                     f"{s.get('proxy_peak_step', 'n/a')}" for s in c["per_seed"])


def seeds_section(run: RunFiles, fig_dir: Path) -> list[str]:
    s = run.summary("recipe_seeds")
    seeds = s.get("seeds", [])
    claims = s.get("claims", {})
    beats = claims.get("grpo_beats_sft", {})
    lines = [f"`recipe_seeds`: the recipe's training stages plus GRPO, DPO, PPO-ptx and a weak-RM "
             f"PPO, run anew for seeds {', '.join(map(str, seeds))} (every stage's seed; "
             f"tokenizer and test problems shared). A claim passes only when it holds in every "
             f"seed.", ""]
    rows = []
    for name, text in CLAIMS.items():
        c = claims.get(name)
        if c is None:
            continue
        rows.append([text.format(**{k: beats.get(k, "n/a") for k in
                                    ("level", "mode", "margin", "max_kl")}),
                     f"**{'passed' if c['passed'] else 'failed'}** "
                     f"({c['seeds_passed']}/{len(c['per_seed'])} seeds)",
                     _claim_detail(name, c)])
    lines += table(["claim", "result", "per seed"], rows) + [""]
    greedy = s.get("greedy", {})
    lines += ["Greedy decoding on the compare stage's held-out problems, mean ± sd over seeds:", ""]
    lines += table(["model", f"{beats.get('level', 'L2')} {beats.get('mode', 'cot')}",
                    "cot, mean of levels", "pass@1", "pass@8", "format valid",
                    "bits/byte (held-out pretraining text)"],
                   [[m, pm(g.get("claim_accuracy")), pm(g.get("cot_mean")), pm(g.get("pass_at_1")),
                     pm(g.get("pass_at_8")), pm(g.get("format_valid")),
                     pm(s.get("bpb", {}).get(m))] for m, g in greedy.items()])
    base = s.get("bpb", {}).get("pretrain")
    lines += ["", f"Alignment tax: the pretrained model's bits/byte is {pm(base)}; every row's "
                  "difference from it is what that training cost on pretraining text.", ""]
    lines += ["Matched KL: held-out accuracy at each method's KL to the SFT model (nats per "
              "response; best-of-N's KL is exact for the verifier, an upper bound for the RM):", ""]
    lines += table(["method", "KL", "sampled accuracy (T=1)", "greedy cot, mean of levels"],
                   [[m["method"], pm(m["kl"], 2) + ("" if m["kl_kind"] == "measured"
                                                    else f" ({m['kl_kind']})"),
                     pm(m["sampled_accuracy"]), pm(m["greedy_cot_mean"])]
                    for m in s.get("matched_kl", []) if m["kl"] is not None])
    lines += [""]
    gao = s.get("gao", {})
    lines += ["Gao et al. (2022) fits, d = sqrt(KL), reward relative to the start: best-of-N "
              "R = d(α − βd), RL R = d(α − β log d):", ""]
    lines += table(["curve", "α", "β"],
                   [[label, pm(gao.get(k, {}).get("alpha")), pm(gao.get(k, {}).get("beta"))]
                    for label, k in (("weak-RM PPO, gold", "rl_gold"),
                                     ("weak-RM PPO, proxy", "rl_proxy"),
                                     ("best-of-N (RM), gold", "bon_gold"),
                                     ("best-of-N (RM), proxy", "bon_proxy"))])
    lines += [""]
    for name, alt in (("matched_kl.png", "accuracy against KL, every method and seed"),
                      ("overoptimization.png", "weak-RM PPO: proxy and gold against sqrt(KL)")):
        src = run.workdir / "recipe_seeds" / name
        if src.exists():
            fig_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, fig_dir / f"seeds_{name}")
            lines += image(fig_dir / f"seeds_{name}", alt, run.workdir)
    minutes = s.get("wall_seconds")
    lines += [f"Wall time: {fmt(None if minutes is None else minutes / 60, 1)} min for "
              f"{len(seeds)} seeds."]
    return lines
