"""What recipe_seeds concludes from its seeds: one row of results per seed, the claims (each
passed only when it holds in every seed), Gao et al. (2022)'s over-optimization fits, the
matched-KL table, and the two figures.

Pure functions of finished stage directories (summary.json, metrics.jsonl), so the analysis can
be rerun on old seed runs and is tested on hand-made ones.

- Gao et al. fit, with d = sqrt(KL(policy || initial)) and R = reward - reward at d = 0:
  best-of-N R(d) = d (alpha - beta d); RL R(d) = d (alpha - beta log d); both linear in
  (alpha, beta), fitted by least squares without an intercept (R(0) = 0 by construction).
- The matched-KL table: each method's held-out accuracy (sampled at temperature 1, and greedy
  where the compare stage scored the model) at its KL to the SFT model. Best-of-N's KL is
  exact for the verifier and the upper bound log N - (N - 1)/N for the RM.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from gpt_jax.metrics import read_metrics, read_summary

# trained models (directory = compare model name) and their labels
METHODS = {"ppo": "PPO (RM)", "ppo_ptx": "PPO-ptx (RM)", "ppo_weak": "PPO (weak RM)",
           "grpo": "GRPO (verifier)", "grpo_rm": "GRPO (RM)", "dpo": "DPO",
           "feedme": "FeedME (best-of-4 distilled)"}
CURVES = ("ppo", "ppo_ptx", "ppo_weak", "grpo", "grpo_rm")  # evaluated during training
# the stage each method's section runs (its summary.json's layout)
SUMMARY_KEY = {"ppo": "ppo", "ppo_ptx": "ppo", "ppo_weak": "ppo", "grpo": "grpo",
               "grpo_rm": "grpo", "dpo": "dpo", "feedme": "feedme"}


def gao_fit(kl, reward, form: str) -> dict[str, float] | None:
    """{alpha, beta, rmse, points} of R(d) = d (alpha - beta f(d)), d = sqrt(kl), f(d) = d
    ("bon") or log d ("rl"); `reward` is already relative to the initial policy. None with fewer
    than two points at d > 0."""
    kl, reward = np.asarray(kl, float), np.asarray(reward, float)
    keep = kl > 1e-9
    d, r = np.sqrt(kl[keep]), reward[keep]
    if len(d) < 2:
        return None
    second = d * d if form == "bon" else d * np.log(d) if form == "rl" else None
    if second is None:
        raise ValueError(f"form={form!r}; expected 'bon' or 'rl'")
    design = np.stack([d, -second], axis=1)
    (alpha, beta), *_ = np.linalg.lstsq(design, r, rcond=None)
    rmse = float(np.sqrt(np.mean((design @ np.array([alpha, beta]) - r) ** 2)))
    return {"alpha": float(alpha), "beta": float(beta), "rmse": rmse, "points": int(len(d))}


def gao_curve(fit: dict, form: str, d):
    d = np.asarray(d, float)
    second = d if form == "bon" else np.log(np.maximum(d, 1e-12))
    return d * (fit["alpha"] - fit["beta"] * second)


def eval_curve(stage_dir: Path) -> list[dict[str, float]]:
    """The held-out evaluations of an RL stage (step 0 = the SFT model), in step order."""
    rows = [r for r in read_metrics(stage_dir / "metrics.jsonl") if "eval_kl" in r]
    return [{"step": int(r["step"]), "kl": float(r["eval_kl"]), "accuracy": float(r["eval_accuracy"]),
             "gold": float(r["eval_gold_reward"]), "proxy": float(r["eval_rm_reward"])}
            for r in sorted(rows, key=lambda r: r["step"])]


def overoptimization(curve: list[dict]) -> dict[str, Any]:
    """Does gold peak before the proxy does? Passed when gold first rises (its peak is after
    step 0), its peak comes strictly before the proxy's, it ends below its peak, and the proxy
    ends above where it started."""
    if len(curve) < 3:
        return {"passed": False, "why": f"{len(curve)} evaluations (need 3)"}
    gold = [r["gold"] for r in curve]
    proxy = [r["proxy"] for r in curve]
    g, p = int(np.argmax(gold)), int(np.argmax(proxy))
    out = {"gold_peak_step": curve[g]["step"], "proxy_peak_step": curve[p]["step"],
           "gold_start": gold[0], "gold_peak": gold[g], "gold_end": gold[-1],
           "proxy_start": proxy[0], "proxy_end": proxy[-1], "kl_at_gold_peak": curve[g]["kl"]}
    out["passed"] = bool(g > 0 and g < p and gold[-1] < gold[g] and proxy[-1] > proxy[0])
    return out


def _greedy(compare: dict, model: str, claims) -> dict[str, Any] | None:
    m = compare.get("models", {}).get(model)
    if m is None:
        return None
    acc, passk = m["accuracy"], m.get("pass_at_k", {})
    cot = [acc[level]["cot"] for level in sorted(acc)]
    p1, p8 = passk.get("1"), passk.get("8")
    return {"claim_accuracy": acc[claims.level][claims.mode], "cot_mean": float(np.mean(cot)),
            "accuracy": acc, "pass_at_1": p1, "pass_at_8": p8,
            "pass_gap": None if p1 is None or p8 is None else p8 - p1,
            "format_valid": m.get("format_valid")}


def _sampled(summary: dict | None, key: str) -> dict[str, float] | None:
    if summary is None or key not in summary:
        return None
    s = summary[key]
    return {k: float(s[k]) for k in ("kl", "accuracy", "gold_reward", "rm_reward")}


def seed_row(seed_dir: Path, seed: int, claims, tax: dict, recipe_summary: dict) -> dict[str, Any]:
    """One seed's results, read from its finished stages."""
    seed_dir = Path(seed_dir)
    s = {name: read_summary(seed_dir / name) for name in
         ("sft", "reward", "reward_weak", "bon", "compare", *METHODS)}
    compare = s["compare"] or {}
    greedy = {m: g for m in ("sft", *METHODS) if (g := _greedy(compare, m, claims)) is not None}
    sampled = {"sft": _sampled(s["ppo"], "sft")}
    sampled.update({name: _sampled(s[name], SUMMARY_KEY[name]) for name in METHODS})
    curves = {name: eval_curve(seed_dir / name) for name in CURVES if s[name] is not None}
    bon = (s["bon"] or {}).get("table", [])
    weak = curves.get(claims.weak_ppo, [])
    row = {"seed": seed, "greedy": greedy, "sampled": sampled, "curves": curves,
           "bon": [{k: r[k] for k in ("n", "kl_analytic", "kl_empirical", "accuracy",
                                      "gold_reward", "rm_reward", "verifier_kl",
                                      "verifier_accuracy")} for r in bon],
           "bpb": {stage: r["all"] for stage, r in tax.items()},
           "rm_vs_gold": {n: (s[n] or {}).get("heldout_accuracy", {}).get(
               "labeler_vs_gold", {}).get("accuracy") for n in ("reward", "reward_weak")},
           "seconds": recipe_summary.get("seconds", {}),
           "matmul_peak_gflops": recipe_summary.get("matmul_peak_gflops")}
    row["checks"] = seed_checks(row, claims)
    row["gao"] = {"rl_gold": _fit_curve(weak, "gold"), "rl_proxy": _fit_curve(weak, "proxy"),
                  "bon_gold": _fit_bon(row["bon"], "gold_reward"),
                  "bon_proxy": _fit_bon(row["bon"], "rm_reward")}
    return row


def _fit_curve(curve: list[dict], key: str):
    if not curve:
        return None
    return gao_fit([r["kl"] for r in curve], [r[key] - curve[0][key] for r in curve], "rl")


def _fit_bon(table: list[dict], key: str):
    if not table:
        return None
    base = table[0][key]  # N = 1: the policy itself
    return gao_fit([r["kl_analytic"] for r in table], [r[key] - base for r in table], "bon")


def seed_checks(row: dict, claims) -> dict[str, dict[str, Any]]:
    """Each claim's test on one seed."""
    g, sft = row["greedy"].get(claims.rl_model), row["greedy"].get("sft")
    kl = (row["sampled"].get(claims.rl_model) or {}).get("kl")
    beats = {"passed": False, "why": "no compare result for sft and " + claims.rl_model}
    if g is not None and sft is not None and kl is not None:
        gain = g["claim_accuracy"] - sft["claim_accuracy"]
        beats = {"sft": sft["claim_accuracy"], "grpo": g["claim_accuracy"], "gain": gain,
                 "kl": kl, "passed": bool(gain >= claims.grpo_margin and kl <= claims.max_kl)}
    narrows = {"passed": False, "why": "no pass@k for sft and " + claims.rl_model}
    if g is not None and sft is not None and None not in (g["pass_gap"], sft["pass_gap"]):
        narrows = {"sft_gap": sft["pass_gap"], "rl_gap": g["pass_gap"],
                   "passed": bool(g["pass_gap"] < sft["pass_gap"])}
    return {"grpo_beats_sft": beats, "rl_narrows": narrows,
            "overoptimization": overoptimization(row["curves"].get(claims.weak_ppo, []))}


def _stat(values) -> dict[str, float] | None:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return None
    return {"mean": float(np.mean(values)), "sd": float(np.std(values, ddof=1)) if len(values) > 1
            else 0.0, "n": len(values)}


def matched_kl_table(rows: list[dict]) -> list[dict[str, Any]]:
    """One line per method: KL to SFT, sampled and greedy held-out accuracy, mean ± sd over
    seeds. Best-of-N lines per N."""
    lines = []

    def add(label, kls, sampled, greedy=(), cot=(), kl_kind="measured"):
        lines.append({"method": label, "kl": _stat(kls), "kl_kind": kl_kind,
                      "sampled_accuracy": _stat(sampled), "greedy_claim_accuracy": _stat(greedy),
                      "greedy_cot_mean": _stat(cot)})

    pick = lambda r, m, k: (r["sampled"].get(m) or {}).get(k)  # noqa: E731
    grd = lambda r, m, k: (r["greedy"].get(m) or {}).get(k)  # noqa: E731
    add("SFT", [0.0 for _ in rows], [pick(r, "sft", "accuracy") for r in rows],
        [grd(r, "sft", "claim_accuracy") for r in rows], [grd(r, "sft", "cot_mean") for r in rows])
    for m, label in METHODS.items():
        add(label, [pick(r, m, "kl") for r in rows], [pick(r, m, "accuracy") for r in rows],
            [grd(r, m, "claim_accuracy") for r in rows], [grd(r, m, "cot_mean") for r in rows])
    ns = sorted({b["n"] for r in rows for b in r["bon"]} - {1})
    for n in ns:
        at = [next((b for b in r["bon"] if b["n"] == n), None) for r in rows]
        add(f"best-of-{n} (RM)", [b and b["kl_analytic"] for b in at],
            [b and b["accuracy"] for b in at], kl_kind="upper bound")
        add(f"best-of-{n} (verifier)", [b and b["verifier_kl"] for b in at],
            [b and b["verifier_accuracy"] for b in at], kl_kind="exact")
    return lines


def summarize(rows: list[dict], claims) -> dict[str, Any]:
    """The claims (passed in every seed), means ± sd, fits and the matched-KL table."""
    out_claims = {}
    for name in ("grpo_beats_sft", "rl_narrows", "overoptimization"):
        per_seed = [{"seed": r["seed"], **r["checks"][name]} for r in rows]
        out_claims[name] = {"passed": bool(rows) and all(c["passed"] for c in per_seed),
                            "seeds_passed": sum(c["passed"] for c in per_seed),
                            "per_seed": per_seed}
    out_claims["grpo_beats_sft"].update(level=claims.level, mode=claims.mode,
                                        margin=claims.grpo_margin, max_kl=claims.max_kl)
    models = sorted({m for r in rows for m in r["greedy"]}, key=lambda m: (m != "sft", m))
    means = {m: {k: _stat([(r["greedy"].get(m) or {}).get(k) for r in rows])
                 for k in ("claim_accuracy", "cot_mean", "pass_at_1", "pass_at_8", "pass_gap",
                           "format_valid")} for m in models}
    bpb = {stage: _stat([r["bpb"].get(stage) for r in rows])
           for stage in sorted({s for r in rows for s in r["bpb"]})}
    gao = {k: {"per_seed": [r["gao"][k] for r in rows],
               "alpha": _stat([(r["gao"][k] or {}).get("alpha") for r in rows]),
               "beta": _stat([(r["gao"][k] or {}).get("beta") for r in rows])}
           for k in ("rl_gold", "rl_proxy", "bon_gold", "bon_proxy")}
    return {"claims": out_claims, "greedy": means, "bpb": bpb, "gao": gao,
            "matched_kl": matched_kl_table(rows),
            "rm_vs_gold": {k: _stat([r["rm_vs_gold"].get(k) for r in rows])
                           for k in ("reward", "reward_weak")},
            "per_seed": rows}
