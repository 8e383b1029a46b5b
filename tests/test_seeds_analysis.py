"""recipe_seeds' analysis against hand-computed values: the Gao et al. fits recover known
coefficients, the over-optimization test, each claim on one seed and over seeds (a claim passes
only when every seed passes), the matched-KL table's means and sds; a stage the workdir finished
with exactly a seed's config is linked into that seed, one that read an unlinked stage is not."""
import json
import math

import numpy as np
import pytest

from gpt_jax.recipe_seeds import claims_config, link_finished, parse_seeds, seeded
from gpt_jax.seeds_analysis import (gao_curve, gao_fit, matched_kl_table, overoptimization,
                                    seed_checks, summarize)


@pytest.mark.parametrize("form", ["rl", "bon"])
def test_gao_fit_recovers_the_coefficients(form):
    kl = np.array([0.0, 0.3, 1.0, 2.5, 4.0, 7.0])
    d = np.sqrt(kl)
    second = d if form == "bon" else np.log(np.where(d > 0, d, 1.0))
    reward = d * (0.7 - 0.25 * second)
    fit = gao_fit(kl, reward, form)
    assert fit["alpha"] == pytest.approx(0.7, abs=1e-9)
    assert fit["beta"] == pytest.approx(0.25, abs=1e-9)
    assert fit["rmse"] < 1e-9 and fit["points"] == 5  # d = 0 says nothing (R(0) = 0)
    assert np.allclose(gao_curve(fit, form, d[1:]), reward[1:])


def test_gao_fit_needs_two_points_and_a_known_form():
    assert gao_fit([0.0, 1.0], [0.0, 0.1], "rl") is None
    with pytest.raises(ValueError, match="form"):
        gao_fit([1.0, 2.0], [0.1, 0.2], "linear")


def _curve(gold, proxy):
    return [{"step": 10 * i, "kl": float(i), "accuracy": 0.0, "gold": g, "proxy": p}
            for i, (g, p) in enumerate(zip(gold, proxy))]


def test_overoptimization_needs_a_rise_then_a_fall_before_the_proxy_peaks():
    ok = overoptimization(_curve([0.1, 0.2, 0.15, 0.05], [0.0, 0.3, 0.6, 0.9]))
    assert ok["passed"] and (ok["gold_peak_step"], ok["proxy_peak_step"]) == (10, 30)
    assert (ok["gold_start"], ok["gold_peak"], ok["gold_end"], ok["kl_at_gold_peak"]) == \
        (0.1, 0.2, 0.05, 1.0)
    # gold only falls (its peak is the SFT model): not the Gao shape
    assert not overoptimization(_curve([0.3, 0.2, 0.1, 0.0], [0.0, 0.3, 0.6, 0.9]))["passed"]
    # gold peaks with the proxy
    assert not overoptimization(_curve([0.1, 0.2, 0.3, 0.25], [0.0, 0.3, 0.9, 0.6]))["passed"]
    assert not overoptimization(_curve([0.1, 0.2], [0.0, 0.3]))["passed"]


def _row(seed, sft_acc, grpo_acc, kl, sft_gap, grpo_gap, gold=(0.1, 0.2, 0.1)):
    greedy = {"sft": {"claim_accuracy": sft_acc, "cot_mean": sft_acc, "pass_gap": sft_gap},
              "grpo": {"claim_accuracy": grpo_acc, "cot_mean": grpo_acc, "pass_gap": grpo_gap}}
    sampled = {"sft": {"kl": 0.0, "accuracy": 0.1, "gold_reward": 0.2, "rm_reward": 0.0},
               "grpo": {"kl": kl, "accuracy": 0.2, "gold_reward": 0.3, "rm_reward": 0.1}}
    bon = [{"n": n, "kl_analytic": math.log(n) - (n - 1) / n, "accuracy": 0.1 * n,
            "verifier_kl": 0.01 * n * (seed + 1), "verifier_accuracy": 0.2 * n}
           for n in (1, 2, 4)]
    row = {"seed": seed, "greedy": greedy, "sampled": sampled, "bon": bon, "bpb": {},
           "rm_vs_gold": {}, "gao": {k: None for k in ("rl_gold", "rl_proxy", "bon_gold",
                                                       "bon_proxy")},
           "curves": {"ppo_weak": _curve(list(gold), [0.0, 0.5, 1.0])}}
    row["checks"] = seed_checks(row, claims_config())
    return row


def test_each_claim_on_one_seed():
    row = _row(0, sft_acc=0.10, grpo_acc=0.16, kl=2.5, sft_gap=0.2, grpo_gap=0.15)
    beats = row["checks"]["grpo_beats_sft"]
    assert beats["passed"] and beats["gain"] == pytest.approx(0.06) and beats["kl"] == 2.5
    assert row["checks"]["rl_narrows"] == {"sft_gap": 0.2, "rl_gap": 0.15, "passed": True}
    assert row["checks"]["overoptimization"]["passed"]
    assert not _row(0, 0.10, 0.14, 2.5, 0.2, 0.15)["checks"]["grpo_beats_sft"]["passed"]  # +0.04
    assert not _row(0, 0.10, 0.16, 3.5, 0.2, 0.15)["checks"]["grpo_beats_sft"]["passed"]  # KL
    assert not _row(0, 0.10, 0.16, 2.5, 0.2, 0.25)["checks"]["rl_narrows"]["passed"]


def test_a_claim_passes_only_in_every_seed_and_the_table_averages_seeds():
    rows = [_row(0, 0.10, 0.16, 2.0, 0.2, 0.15), _row(1, 0.10, 0.12, 3.0, 0.2, 0.1)]
    out = summarize(rows, claims_config())
    beats = out["claims"]["grpo_beats_sft"]
    assert not beats["passed"] and beats["seeds_passed"] == 1
    assert [c["passed"] for c in beats["per_seed"]] == [True, False]
    assert out["claims"]["rl_narrows"]["passed"] and out["claims"]["rl_narrows"]["seeds_passed"] == 2
    assert out["greedy"]["grpo"]["claim_accuracy"]["mean"] == pytest.approx(0.14)
    assert out["greedy"]["grpo"]["claim_accuracy"]["sd"] == pytest.approx(np.std([0.16, 0.12],
                                                                                 ddof=1))
    table = {line["method"]: line for line in matched_kl_table(rows)}
    assert table["GRPO (verifier)"]["kl"] == {"mean": 2.5, "sd": pytest.approx(math.sqrt(0.5)),
                                              "n": 2}
    assert table["SFT"]["kl"]["mean"] == 0.0 and table["PPO (RM)"]["kl"] is None  # not run
    bon4 = table["best-of-4 (RM)"]
    assert bon4["kl"]["mean"] == pytest.approx(math.log(4) - 0.75) and bon4["kl_kind"] == \
        "upper bound"
    assert table["best-of-4 (verifier)"]["kl"]["mean"] == pytest.approx((0.04 + 0.08) / 2)
    assert "best-of-1 (RM)" not in table


def test_seeds_are_parsed_strictly():
    assert parse_seeds("0,1,2") == [0, 1, 2] and parse_seeds([3]) == [3]
    for bad in ("", "0,0", "a"):
        with pytest.raises(ValueError):
            parse_seeds(bad)


def _finished(stage_dir, config):
    from gpt_jax.stages import config_dict

    stage_dir.mkdir(parents=True)
    (stage_dir / "config.json").write_text(json.dumps(config_dict(config)))
    (stage_dir / "summary.json").write_text("{}")


def test_stages_the_workdir_finished_with_a_seeds_config_are_linked_not_retrained(tmp_path):
    from gpt_jax.recipe import load_experiment

    recipe = load_experiment("recipe_seeds_smoke").recipe
    seed0 = seeded(recipe, 0)
    for stage in ("tokenizer", "pretrain", "reward"):  # reward: equal, but it read sft
        _finished(tmp_path / stage, seed0[stage])
    other = seed0.sft.copy_and_resolve_references()
    other.train.total_steps += 1
    _finished(tmp_path / "sft", other)  # another config: this seed trains its own
    (tmp_path / "data_cache").mkdir()
    (tmp_path / "ppo").mkdir()  # not finished
    seed_dir = tmp_path / "recipe_seeds" / "seed0"
    seed_dir.mkdir(parents=True)
    assert link_finished(tmp_path, seed_dir, seed0) == ["tokenizer", "pretrain"]
    assert (seed_dir / "pretrain").resolve() == (tmp_path / "pretrain").resolve()
    assert (seed_dir / "data_cache").resolve() == (tmp_path / "data_cache").resolve()
    assert not (seed_dir / "sft").exists() and not (seed_dir / "reward").exists()
    assert link_finished(tmp_path, seed_dir, seed0) == []  # already there
    seed1_dir = tmp_path / "recipe_seeds" / "seed1"
    seed1_dir.mkdir()
    assert link_finished(tmp_path, seed1_dir, seeded(recipe, 1)) == ["tokenizer"]  # unseeded
