"""The PPO, best-of-N and FeedME stages end to end on the shared tiny workdir (tokenizer, SFT and
an untrained reward model): files, summary keys, the SFT baseline at KL 0, the policies loadable
as GPTs, skipping when done, and PPO's exact resume after a crash. Plus the best-of-N arithmetic
and FeedME's data selection on hand-made numbers."""
import contextlib
import dataclasses
import itertools
import json
import math
import shutil

import jax
import numpy as np
import pytest

from gpt_jax.checkpoint import load_stage
from gpt_jax.metrics import read_metrics
from gpt_jax.train import bon, feedme, ppo
from tiny_workdir import config_from_tests, shared_tiny_workdir


# -- best-of-N and FeedME arithmetic --------------------------------------------------------------
def test_best_of_n_table_on_hand_made_scores():
    rm = np.array([[0.1, 0.9, 0.5, 0.2], [0.4, 0.3, 0.8, 0.7]])
    gold = np.array([[0.0, 1.0, 0.0, 0.25], [1.0, 0.0, 0.0, 0.05]])
    correct = (gold >= 1.0).astype(float)
    table = bon.best_of_n_table(rm, gold, correct, [1, 2, 4])
    assert [r["n"] for r in table] == [1, 2, 4]
    assert table[0]["gold_reward"] == pytest.approx(gold.mean())
    # N=2: groups (0.1, 0.9) (0.5, 0.2) | (0.4, 0.3) (0.8, 0.7) -> picks 1.0, 0.0, 1.0, 0.0
    assert table[1]["gold_reward"] == pytest.approx(0.5)
    assert table[1]["rm_reward"] == pytest.approx((0.9 + 0.5 + 0.4 + 0.8) / 4)
    assert table[1]["answers"] == 4
    # N=4: the RM-best of all four -> 1.0 (0.9) and 0.0 (0.8)
    assert table[2]["gold_reward"] == pytest.approx(0.5) and table[2]["accuracy"] == 0.5
    assert table[2]["kl_analytic"] == pytest.approx(math.log(4) - 3 / 4)
    # the verifier picks the first correct draw of a group: N=2 finds 1 of 2 groups per prompt
    assert [r["verifier_accuracy"] for r in table] == [0.25, 0.5, 1.0]
    assert table[2]["verifier_gold_reward"] == 1.0
    q = 1 - 0.75**4  # both prompts have 1 correct draw of 4
    assert table[2]["verifier_kl"] == pytest.approx(q * math.log(q / 0.25)
                                                    + (1 - q) * math.log((1 - q) / 0.75))
    with pytest.raises(ValueError, match="does not divide"):
        bon.best_of_n_table(rm, gold, correct, [3])


def test_verifier_kl_equals_brute_force():
    """Best-of-n with a binary verifier over a 4-outcome policy (2 outcomes correct), enumerated:
    the first correct draw is kept, else the first draw."""
    pi, ok = np.array([0.1, 0.2, 0.3, 0.4]), np.array([True, False, True, False])
    for n in (1, 2, 3, 5):
        picked = np.zeros(4)
        for draws in itertools.product(range(4), repeat=n):
            good = [d for d in draws if ok[d]]
            picked[good[0] if good else draws[0]] += np.prod(pi[list(draws)])
        brute = float((picked * np.log(picked / pi)).sum())
        assert float(bon.verifier_kl(pi[ok].sum(), n)) == pytest.approx(brute, rel=1e-9, abs=1e-12)
    assert float(bon.verifier_kl(0.0, 4)) == 0.0 and float(bon.verifier_kl(1.0, 4)) == 0.0
    # an upper bound only for rewards without ties: a binary reward is far below it
    assert float(bon.verifier_kl(0.3, 8)) < bon.analytic_kl(8)


def test_empirical_kl_plug_in_values():
    distinct = np.array([[0.1, 0.2, 0.3, 0.4]])
    # best-of-2 over 4 equally likely outcomes picks the k-th smallest w.p. ((k/4)^2 - ((k-1)/4)^2)
    p = np.array([1, 3, 5, 7]) / 16
    assert bon.empirical_kl(distinct, 2) == pytest.approx(float((p * np.log(p / 0.25)).sum()))
    assert bon.empirical_kl(distinct, 1) == 0.0
    assert bon.empirical_kl(np.zeros((3, 8)), 4) == 0.0  # all tied: best-of-N is the policy
    big = np.random.default_rng(0).normal(size=(20, 4096))
    assert bon.empirical_kl(big, 8) == pytest.approx(bon.analytic_kl(8), abs=0.01)


def test_feedme_keeps_the_rm_best_finished_response():
    samples = {
        "ids": [[5, 6], [7], [8, 9, 9], [4]],
        "texts": ["a", "b", "c", "d"],
        "rm": np.array([[0.2, 0.9], [0.5, 0.1]]),
        "gold": np.array([[0.0, 1.0], [0.05, 0.0]]),
        "finished": np.array([[True, False], [True, True]]),
    }
    examples, records = feedme.distillation_examples([[1, 2], [3]], samples, 2, end_id=99)
    # prompt 0: the 0.9 response did not finish -> the 0.2 one; prompt 1: the 0.5 one
    assert [r["text"] for r in records] == ["a", "c"]
    ids, mask = examples[0]
    assert ids.tolist() == [1, 2, 5, 6, 99] and mask.tolist() == [0, 0, 1, 1, 1]
    assert examples[1][0].tolist() == [3, 8, 9, 9, 99]
    # tokens a tool wrote (a calculator result) are in the ids but never trained on
    samples["tool_masks"] = [[0, 1], [0], [0, 1, 1], [0]]
    examples, records = feedme.distillation_examples([[1, 2], [3]], samples, 2, end_id=99)
    assert examples[0][1].tolist() == [0, 0, 1, 0, 1] and records[0]["loss_mask"] == [1, 0, 1]
    assert examples[1][1].tolist() == [0, 1, 0, 0, 1]


# -- the stages -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def workdir(tmp_path_factory, data_dir):
    return shared_tiny_workdir(tmp_path_factory, data_dir)


def _fresh(tmp_path, workdir):
    """A workdir sharing the shared run's finished stages (symlinks), so runs do not collide."""
    for stage in ("tokenizer", "pretrain", "sft", "reward"):
        (tmp_path / stage).symlink_to(workdir / stage)
    return tmp_path


@pytest.mark.slow
def test_ppo_stage_then_resume_after_a_crash(workdir, tmp_path, monkeypatch):
    (tmp_path / "straight").mkdir()
    straight = _fresh(tmp_path / "straight", workdir)
    summary = ppo.run(config_from_tests("ppo_test"), str(straight))
    for key in ("sft", "ppo", "final_kl", "gold_gain", "beta_final", "rollout_batch",
                "update_seconds_per_step", "wall_seconds"):
        assert key in summary, key
    assert summary["sft"]["kl"] == 0.0  # the SFT model against itself
    assert summary["ppo"]["kl"] > 0.0 and summary["ppo"]["responses"] == 8
    rows = read_metrics(straight / "ppo" / "metrics.jsonl")
    assert [r["step"] for r in rows if "eval_kl" in r] == [0, 2, 4]
    train = {r["step"]: r for r in rows if "kl" in r}
    assert sorted(train) == [1, 2, 3, 4] and train[1]["kl"] == 0.0
    for key in ("rm_reward", "gold_reward", "entropy", "clip_frac", "approx_kl", "value_loss",
                "explained_variance", "response_length", "beta"):
        assert np.isfinite(train[4][key]), key
    assert (straight / "ppo" / "reward_vs_kl.png").stat().st_size > 0
    model_config, params = load_stage(straight, "ppo")  # the policy, as a GPT
    assert set(params) >= {"wte", "ln_f"}
    assert ppo.run(config_from_tests("ppo_test"), str(straight)) == summary  # done: skipped

    # A crash after the step-2 checkpoint, then a resume: steps 3-4 are bitwise the same.
    (tmp_path / "crashed").mkdir()
    crashed = _fresh(tmp_path / "crashed", workdir)
    from gpt_jax.train.ppo_trainer import PPOTrainer

    real_step, calls = PPOTrainer.step, []

    def crash_on_third(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("simulated crash")
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(PPOTrainer, "step", crash_on_third)
    with pytest.raises(RuntimeError, match="simulated crash"):
        ppo.run(config_from_tests("ppo_test"), str(crashed))
    monkeypatch.setattr(PPOTrainer, "step", real_step)
    resumed = ppo.run(config_from_tests("ppo_test"), str(crashed))
    a = {r["step"]: r for r in read_metrics(straight / "ppo" / "metrics.jsonl") if "kl" in r}
    b = {r["step"]: r for r in read_metrics(crashed / "ppo" / "metrics.jsonl") if "kl" in r}
    assert sorted(b) == [1, 2, 3, 4]
    for step in (3, 4):
        for key in ("loss", "kl", "rm_reward", "value_loss"):
            assert a[step][key] == b[step][key], (step, key)
    assert resumed["ppo"]["gold_reward"] == summary["ppo"]["gold_reward"]


@pytest.mark.slow
def test_bon_and_feedme_stages(workdir, tmp_path):
    wd = _fresh(tmp_path, workdir)
    s = bon.run(config_from_tests("bon_test"), str(wd))
    assert [r["n"] for r in s["table"]] == [1, 2, 4]
    assert s["table"][0]["kl_empirical"] == 0.0
    rm = [r["rm_reward"] for r in s["table"]]
    assert rm[0] <= rm[1] <= rm[2]  # the RM-best of more draws scores higher by construction
    assert s["table"][2]["answers"] == 4 and len((wd / "bon" / "samples.jsonl").read_text())

    f = feedme.run(config_from_tests("feedme_test"), str(wd))
    # the tuned model moved off the SFT one (a sampled KL estimate: may be < 0 on 8 samples)
    assert f["sft"]["kl"] == 0.0 and f["kl"] != 0.0 and np.isfinite(f["kl"])
    assert f["distilled"] == len((wd / "feedme" / "best.jsonl").read_text().splitlines())
    assert f["ppo_at_similar_kl"] is None  # no ppo/ in this workdir
    _, params = load_stage(wd, "feedme")
    assert set(params) >= {"wte", "ln_f"}
    shutil.rmtree(wd / "feedme" / "checkpoints")  # best.jsonl is reused on a re-run
    (wd / "feedme" / "summary.json").unlink()
    again = feedme.run(config_from_tests("feedme_test"), str(wd))
    assert again["distilled"] == f["distilled"]
    assert json.loads((wd / "feedme" / "summary.json").read_text())["stage"] == "feedme"
    jax.clear_caches()


@pytest.mark.slow
def test_ppo_over_seeds(workdir, tmp_path):
    from gpt_jax.train import ppo_seeds

    wd = _fresh(tmp_path, workdir)
    s = ppo_seeds.run(config_from_tests("ppo_seeds_test"), str(wd))
    assert [r["seed"] for r in s["per_seed"]] == [0, 1]
    for r in s["per_seed"]:
        one = json.loads((wd / f"ppo_seed{r['seed']}" / "summary.json").read_text())
        assert one["seed"] == r["seed"]
        assert r["ppo_gold_reward"] == one["ppo"]["gold_reward"] and r["kl"] == one["ppo"]["kl"]
    assert s["passed"] == (min(r["ppo_gold_reward"] for r in s["per_seed"])
                           > max(r["sft_gold_reward"] for r in s["per_seed"]))
    assert (wd / "ppo_seeds" / "reward_vs_kl.png").stat().st_size > 0


def test_ppo_seeds_reuses_the_finished_ppo_stage_only_when_configs_match(tmp_path):
    import ml_collections

    from gpt_jax.metrics import save_stage_config, write_summary
    from gpt_jax.train.ppo_seeds import reuse_finished_ppo

    config = ml_collections.ConfigDict({"stage": "ppo", "seed": 0, "ppo": {"kl_coef": 0.05}})
    other = ml_collections.ConfigDict({"stage": "ppo", "seed": 1, "ppo": {"kl_coef": 0.05}})
    assert not reuse_finished_ppo(config, tmp_path, "ppo_seed0")  # no ppo stage yet
    save_stage_config(tmp_path / "ppo", config)
    assert not reuse_finished_ppo(config, tmp_path, "ppo_seed0")  # ppo not finished
    write_summary(tmp_path / "ppo", {"stage": "ppo"})
    assert not reuse_finished_ppo(other, tmp_path, "ppo_seed1")
    assert not (tmp_path / "ppo_seed1").exists()
    assert reuse_finished_ppo(config, tmp_path, "ppo_seed0")
    assert (tmp_path / "ppo_seed0").resolve() == (tmp_path / "ppo").resolve()
    assert not reuse_finished_ppo(config, tmp_path, "ppo_seed0")  # already there: left alone


@contextlib.contextmanager
def _crash_on_third_call(monkeypatch, cls, name: str):
    """`cls.name` raises on its third call inside the block (a simulated crash the block must
    raise), and is itself again afterwards."""
    real, calls = getattr(cls, name), []

    def crashing(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("simulated crash")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(cls, name, crashing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        yield
    monkeypatch.setattr(cls, name, real)


@pytest.mark.slow
def test_grpo_stage_then_resume_after_a_crash(workdir, tmp_path, monkeypatch):
    from gpt_jax.train import grpo

    (tmp_path / "straight").mkdir()
    straight = _fresh(tmp_path / "straight", workdir)
    summary = grpo.run(config_from_tests("grpo_test"), str(straight))
    for key in ("sft", "grpo", "final_kl", "gold_gain", "accuracy_gain", "dropped_groups",
                "groups", "update_seconds_per_step", "wall_seconds"):
        assert key in summary, key
    assert summary["sft"]["kl"] == 0.0 and summary["grpo"]["responses"] == 8
    assert summary["groups"] == 8 and 0 <= summary["dropped_groups"] <= 8
    rows = read_metrics(straight / "grpo" / "metrics.jsonl")
    assert [r["step"] for r in rows if "eval_kl" in r] == [0, 2, 4]
    train = {r["step"]: r for r in rows if "loss" in r}
    assert sorted(train) == [1, 2, 3, 4]
    assert train[1]["first_ratio_mean"] == pytest.approx(1.0, abs=1e-5)
    for key in ("gold_reward", "rm_reward", "kl", "clip_frac", "response_length", "accuracy"):
        assert np.isfinite(train[4][key]), key
    model_config, params = load_stage(straight, "grpo")  # the policy, as a GPT
    assert set(params) >= {"wte", "ln_f"}
    assert grpo.run(config_from_tests("grpo_test"), str(straight)) == summary  # done: skipped

    # A crash in the third step (after the step-2 checkpoint), then a resume: steps 3-4 are
    # bitwise the same, rollouts included (prompts and seeds are functions of the step).
    (tmp_path / "crashed").mkdir()
    crashed = _fresh(tmp_path / "crashed", workdir)
    with _crash_on_third_call(monkeypatch, grpo.GroupRollouts, "next_for"):
        grpo.run(config_from_tests("grpo_test"), str(crashed))
    resumed = grpo.run(config_from_tests("grpo_test"), str(crashed))
    a = {r["step"]: r for r in read_metrics(straight / "grpo" / "metrics.jsonl") if "loss" in r}
    b = {r["step"]: r for r in read_metrics(crashed / "grpo" / "metrics.jsonl") if "loss" in r}
    assert sorted(b) == [1, 2, 3, 4]
    for step in (3, 4):
        for key in ("loss", "kl", "gold_reward", "rm_reward"):
            assert a[step][key] == b[step][key], (step, key)
    assert resumed["grpo"]["gold_reward"] == summary["grpo"]["gold_reward"]


def _rankings(workdir, out_dir):
    """A comparisons.jsonl as the reward stage writes it: per problem, the reference solution
    ranked above a wrong one (group 0 over group 1), train and held-out problems."""
    from gpt_jax.data import tasks_data
    from gpt_jax.tokenizer import Tokenizer

    tok = Tokenizer.load(str(workdir / "tokenizer" / "tokenizer.json"))
    config = config_from_tests("dpo_test")
    out_dir.mkdir()
    with open(out_dir / "comparisons.jsonl", "w") as f:
        for split, n in (("train", 12), ("heldout", 4)):
            _, problems = tasks_data.rl_problems(config, split, str(workdir), n=n)
            for p in problems:
                good, bad = p.solution, f"The answer is {int(p.answer) + 1}."  # differs early
                f.write(json.dumps({"problem": dataclasses.asdict(p), "completions": [good, bad],
                                    "completion_ids": [tok.encode(good), tok.encode(bad)],
                                    "groups": [0, 1], "gold": [1.0, 0.0], "split": split}) + "\n")
        # a tie on top (two pairs, each tied reply over the bad one), and a pair whose two
        # replies are the same (no preference: left out and counted)
        ids = [tok.encode(good), tok.encode(good), tok.encode(bad)]
        f.write(json.dumps({"problem": dataclasses.asdict(p), "completions": [good, good, bad],
                            "completion_ids": ids, "groups": [0, 0, 1], "gold": [1.0, 1.0, 0.0],
                            "split": "train"}) + "\n")
        f.write(json.dumps({"problem": dataclasses.asdict(p), "completions": [good, good],
                            "completion_ids": ids[:2], "groups": [0, 1], "gold": [1.0, 1.0],
                            "split": "train"}) + "\n")


@pytest.mark.slow
def test_dpo_stage_then_resume_after_a_crash(workdir, tmp_path, monkeypatch):
    from gpt_jax.train import dpo

    (tmp_path / "straight").mkdir()
    straight = _fresh(tmp_path / "straight", workdir)
    _rankings(workdir, straight / "rankings")
    summary = dpo.run(config_from_tests("dpo_test"), str(straight))
    assert summary["train_pairs"] == 12 + 2 and summary["heldout_pairs"] == 4
    assert summary["heldout_gold_pairs"] == 4 and summary["identical_pairs_left_out"] == 1
    rows = read_metrics(straight / "dpo" / "metrics.jsonl")
    evals = {r["step"]: r for r in rows if "eval_heldout_accuracy" in r}
    assert sorted(evals) == [0, 2, 4]
    assert evals[0]["eval_heldout_margin"] == 0.0  # the SFT model against itself
    train = {r["step"]: r for r in rows if "reward_accuracy" in r}
    assert 2 in train and 4 in train
    assert summary["heldout_margin"] > 0.0  # the held-out chosen replies gained on the rejected
    assert set(load_stage(straight, "dpo")[1]) >= {"wte", "ln_f"}
    # sampled as PPO's evaluation samples: the SFT model against itself at KL 0, 4 x 2 responses
    assert summary["sft"]["kl"] == 0.0 and summary["dpo"]["responses"] == 8
    assert summary["kl"] == summary["dpo"]["kl"] != 0.0  # a sampled estimate: moved, either sign
    assert dpo.run(config_from_tests("dpo_test"), str(straight)) == summary  # done: skipped

    # a crash in step 3, then a resume: the same final state (bitwise equal metrics and evals)
    (tmp_path / "crashed").mkdir()
    crashed = _fresh(tmp_path / "crashed", workdir)
    _rankings(workdir, crashed / "rankings")
    with _crash_on_third_call(monkeypatch, dpo.PairBatches, "__next__"):
        dpo.run(config_from_tests("dpo_test"), str(crashed))
    resumed = dpo.run(config_from_tests("dpo_test"), str(crashed))
    a = {r["step"]: r for r in read_metrics(crashed / "dpo" / "metrics.jsonl") if "loss" in r}
    assert a[4]["loss"] == train[4]["loss"] and a[4]["grad_norm"] == train[4]["grad_norm"]
    assert resumed["heldout_margin"] == summary["heldout_margin"]


@pytest.mark.slow
def test_dpo_on_the_human_sets_as_the_control(workdir, tmp_path):
    from gpt_jax.data import ranking
    from gpt_jax.tokenizer import Tokenizer
    from gpt_jax.train import dpo

    run_dir = _fresh(tmp_path, workdir)
    config = config_from_tests("dpo_test")
    config.dpo.update(source="human", human_max_records=6)
    summary = dpo.run(config, str(run_dir))
    tok = Tokenizer.load(str(workdir / "tokenizer" / "tokenizer.json"))
    train, held = dpo.human_rankings(config, str(run_dir), tok, 6)
    assert len(train) + len(held) == 6 * 4  # six records of each of the four sets
    for rows in (train, held):  # best first: each ranking's pairs are its C(k, 2)
        assert all(g == list(range(len(ids))) for _, ids, g, _ in rows)
    pairs = lambda rows: sum(len(ids) * (len(ids) - 1) // 2 for _, ids, _, _ in rows)  # noqa
    assert summary["source"] == "human"
    assert summary["train_pairs"] + summary["identical_pairs_left_out"] >= 1
    assert summary["train_pairs"] <= pairs(train) and summary["heldout_pairs"] <= pairs(held)
    assert summary["heldout_gold_pairs"] == summary["heldout_pairs"]  # human ranks never tie
    assert summary["sft"]["kl"] == 0.0 and summary["dpo"]["responses"] == 8  # the task's eval
    # the held-out records are the reward stage's (the same sha256 rule and fraction)
    from gpt_jax.data import pipeline, registry

    rec = next(registry.read_records(registry.prepare(
        "dpo_en_demo", data_dir=config.data.dir or None,
        cache_dir=pipeline.resolve_cache_dir(config, str(run_dir), None)), "train"))
    expect_held = ranking.held_out(rec["id"], 0.2)
    first = (tok.render_for_completion(rec["prompt"]), [tok.encode(r) for r in rec["responses"]])
    in_held = any(p == first[0] and ids == first[1] for p, ids, _, _ in held)
    assert in_held == expect_held
    config.dpo.source = "people"
    with pytest.raises(ValueError, match="dpo.source"):
        dpo.run(config, str(tmp_path / "other"))
