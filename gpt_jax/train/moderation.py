"""Moderation stage: a harmful-request classifier on the pretrained trunk.

Model: `heads.RewardModel` used as a sequence classifier (the pretrained GPT trunk + a Dense(1)
head on the hidden state of the text's last token): its scalar is the harmful logit. Data:
`gpt_jax.moderation_data` (HH-RLHF red-team requests against English SFT instructions, split by
record id). Loss: binary cross-entropy; every batch holds harmful and benign texts half and half
(the sets differ in size). Trained on the shared loop (`train/loop.py`: resume, metrics,
checkpoints, the non-finite check).

Held-out report: precision and recall at probability 0.5, AUROC, the false-positive rate at 90%
recall, and the same for a baseline on the same split (TF-IDF of word 1-2-grams + logistic
regression, scikit-learn); `ms_per_check`: one text at a time through the jitted classifier on
this host, tokenization included (what a server's check costs). The model is saved to
`<stage>/final`; `load_moderation_model` and `make_classifier` are what the server uses.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import flax.linen as nn
import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from gpt_jax import moderation_data as MD
from gpt_jax import sharding as shd
from gpt_jax.checkpoint import Checkpointer, load_stage
from gpt_jax.data.step_batches import StepIndexedBatches
from gpt_jax.flops import train_flops_per_token
from gpt_jax.heads import RewardModel, score
from gpt_jax.metrics import write_summary
from gpt_jax.model import GPTConfig
from gpt_jax.stages import begin_stage
from gpt_jax.train.loop import Loop
from gpt_jax.train.pretrain import build
from gpt_jax.train.state import state_from_params

STAGE = "moderation"


def moderation_config(**overrides) -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict({
        "heldout_fraction": 0.2,
        "threshold": 0.5,        # flagged when p(harmful) >= this, unless threshold_recall
        # > 0: the threshold is then the score that flags this share of the TRAINING set's
        # harmful texts (batches are half harmful, so 0.5 flagged a third of LIMA's requests)
        "threshold_recall": 0.9,
        "latency_checks": 64,    # single-text checks timed for ms_per_check
        "score_batch": 64,
        # benign besides the SFT sets' requests: their replies, and this many of the
        # arithmetic task's problems (question and reply): what the server checks
        "replies": True,
        "arithmetic": 2000,
    })
    cfg.update(overrides)
    return cfg


def bce_loss_fn(model: RewardModel, z_loss: float = 0.0):
    """loss_fn(params, batch, rng) over {"tokens" [B, T], "eos_index" [B, 1], "label" [B, 1]}
    (the per-row fields are [B, 1]: the batch sharding splits rows of rank-2 arrays)."""
    del z_loss

    def loss_fn(params, batch, rng):
        tokens = batch["tokens"]
        valid = jnp.arange(tokens.shape[1])[None, :] <= batch["eos_index"]
        logits = model.apply({"params": params}, tokens, valid, deterministic=rng is None,
                             rngs=None if rng is None else {"dropout": rng})
        y = batch["label"][:, 0].astype(jnp.float32)
        loss = optax.sigmoid_binary_cross_entropy(logits, y).mean()
        accuracy = ((logits > 0) == (y > 0.5)).astype(jnp.float32).mean()
        return loss, {"accuracy": accuracy, "num_tokens": jnp.float32(tokens.shape[0])}

    return loss_fn


class ModerationIterator(StepIndexedBatches):
    """Balanced batches: harmful and benign examples drawn half and half, each set shuffled and
    repeated; batch `step` is a pure function of (seed, step), so resuming is exact."""

    def __init__(self, tokenizer, examples: list[MD.Example], *, batch_size: int, seq_len: int,
                 seed: int, split: str = "train"):
        self.seed, self.batch_size, self.seq_len, self.split = seed, batch_size, seq_len, split
        by_label = [[e for e in examples if e.label == y] for y in (0, 1)]
        if not all(by_label):
            raise ValueError(f"moderation {split} data needs both labels; got "
                             f"{[len(x) for x in by_label]} (benign, harmful)")
        encoded = [[(MD.encode(tokenizer, e.text, seq_len), e.label) for e in xs]
                   for xs in by_label]
        mixed = grain.MapDataset.mix(
            [grain.MapDataset.source(xs).shuffle(seed=seed * 7 + y).repeat()
             for y, xs in enumerate(encoded)], [0.5, 0.5])
        pad = tokenizer.pad_id

        def make_batch(step: int) -> dict:
            tokens = np.full((batch_size, seq_len), pad, np.int32)
            eos = np.zeros((batch_size, 1), np.int32)
            label = np.zeros((batch_size, 1), np.int32)
            for j in range(batch_size):
                ids, y = mixed[step * batch_size + j]
                tokens[j, : len(ids)], eos[j, 0], label[j, 0] = ids, len(ids) - 1, y
            return {"tokens": tokens, "eos_index": eos, "label": label}

        self._serve(make_batch, loader_threads=1, prefetch=2)


def make_classifier(model_config: GPTConfig, tokenizer, seq_len: int,
                    rows: int) -> Callable[[Any, list[str]], np.ndarray]:
    """probs(params, texts) -> p(harmful) [N], scored in fixed [rows, seq_len] chunks."""
    fn = jax.jit(lambda params, tokens, eos: jax.nn.sigmoid(
        score(params, model_config, tokens, lengths=eos + 1)))

    def probs(params, texts: list[str]) -> np.ndarray:
        out = []
        for start in range(0, len(texts), rows):
            chunk = list(texts[start:start + rows])
            n = len(chunk)
            tokens, eos = MD.batch(tokenizer, chunk + [""] * (rows - n), seq_len)
            out.append(np.asarray(fn(params, tokens, eos))[:n])
        return np.concatenate(out) if out else np.zeros((0,), np.float32)

    return probs


def binary_metrics(labels, probs, threshold: float) -> dict[str, float]:
    from sklearn.metrics import roc_auc_score, roc_curve

    labels, probs = np.asarray(labels), np.asarray(probs)
    pred = probs >= threshold
    tp = int((pred & (labels == 1)).sum())
    fpr, tpr, _ = roc_curve(labels, probs)
    return {"auroc": float(roc_auc_score(labels, probs)),
            "precision": tp / max(int(pred.sum()), 1),
            "recall": tp / max(int((labels == 1).sum()), 1),
            "fpr_at_90_recall": float(fpr[np.argmax(tpr >= 0.9)]),
            "accuracy": float((pred == (labels == 1)).mean())}


def flagged_by_source(examples: list[MD.Example], probs, threshold: float) -> dict[str, float]:
    """The fraction of each source's held-out texts flagged (benign sources: false positives)."""
    flagged: dict[str, list[bool]] = {}
    for e, p in zip(examples, probs):
        flagged.setdefault(e.source, []).append(bool(p >= threshold))
    return {s: float(np.mean(v)) for s, v in sorted(flagged.items())}


def tfidf_baseline(train: list[MD.Example], held: list[MD.Example], threshold: float) -> dict:
    """TF-IDF (word 1-2-grams, sublinear tf) + balanced logistic regression, same split."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2)
    x = vec.fit_transform([e.text for e in train])
    clf = LogisticRegression(max_iter=2000, class_weight="balanced")
    clf.fit(x, [e.label for e in train])
    probs = clf.predict_proba(vec.transform([e.text for e in held]))[:, 1]
    return binary_metrics([e.label for e in held], probs, threshold)


def load_moderation_model(workdir: str, stage: str = STAGE) -> tuple[GPTConfig, dict, dict]:
    """(model config, params, summary) of `<workdir>/<stage>/final` (saved as the reward stage
    saves its model, so `reward.load_reward_model` reads it)."""
    from gpt_jax.metrics import read_summary
    from gpt_jax.train.reward import load_reward_model

    summary = read_summary(Path(workdir) / stage)
    if summary is None:
        raise FileNotFoundError(f"{Path(workdir) / stage}: no finished moderation stage")
    model_config, params = load_reward_model(workdir, stage)
    return model_config, params, summary


def run(config, workdir: str) -> dict[str, Any]:
    from gpt_jax.data import pipeline
    from gpt_jax.tokenizer import Tokenizer

    stage_dir, done = begin_stage(config, workdir, STAGE, parent=config.parent)
    if done is not None:
        return done
    t_start = time.perf_counter()
    mcfg, tcfg, T = config.moderation, config.train, int(config.train.seq_len)
    tokenizer = Tokenizer.load(str(Path(workdir) / "tokenizer" / "tokenizer.json"))
    data = MD.load_examples(config.data.dir or None,
                            pipeline.resolve_cache_dir(config, workdir, None),
                            float(mcfg.heldout_fraction), config.data.skip_bad_records,
                            replies=bool(mcfg.get("replies", False)),
                            arithmetic=int(mcfg.get("arithmetic", 0)))
    train, held = data["train"], data["heldout"]
    mesh = shd.mesh_from_config(config.mesh)
    built = build(config, mesh, bce_loss_fn, model_cls=RewardModel)
    _, trunk = load_stage(workdir, config.parent)
    train_iter = ModerationIterator(tokenizer, train, batch_size=tcfg.batch_size, seq_len=T,
                                    seed=config.seed)
    classify = make_classifier(built.model_config, tokenizer, T, int(mcfg.score_batch))
    labels = np.array([e.label for e in held])

    def hook(params, step):
        return {"heldout_auroc": binary_metrics(labels, classify(params, [e.text for e in held]),
                                                float(mcfg.threshold))["auroc"]}

    def init_state():
        head = nn.unbox(built.init_params(jax.random.key(config.seed))["head"])
        return state_from_params({"trunk": trunk, "head": head}, built.tx, built.state_shardings)

    tokens_per_step = tcfg.batch_size * T
    loop = Loop(
        stage_dir=str(stage_dir), train_cfg=tcfg, train_step=built.train_step,
        train_iter=train_iter, put_batch=lambda b: jax.device_put(b, built.batch_sharding),
        abstract_state=built.abstract_state, state_shardings=built.state_shardings,
        eval_step=built.eval_step, eval_hook=hook,
        make_eval_iter=lambda: ModerationIterator(tokenizer, held, batch_size=tcfg.batch_size,
                                                  seq_len=T, seed=config.seed, split="heldout"),
        tokens_per_step=tokens_per_step,
        flops_per_step=train_flops_per_token(built.model_config, T) * tokens_per_step,
        peak_flops=tcfg.peak_flops, meta={"stage": STAGE, "model": config.model.to_dict()},
        desc=STAGE)
    result = loop.run(init_state, jax.random.key(config.seed))
    params = jax.device_get(result.state.params)
    final = Checkpointer(stage_dir / "final", max_to_keep=1, async_save=False)
    final.save(0, {"params": params}, meta={"stage": STAGE})
    final.close()

    t_eval = time.perf_counter()
    threshold = float(mcfg.threshold)
    if float(mcfg.get("threshold_recall", 0.0)) > 0:
        harmful = classify(params, [e.text for e in train if e.label])
        threshold = float(np.quantile(harmful, 1.0 - float(mcfg.threshold_recall)))
    held_probs = classify(params, [e.text for e in held])
    ours = binary_metrics(labels, held_probs, threshold)
    base = tfidf_baseline(train, held, float(mcfg.threshold))
    one = make_classifier(built.model_config, tokenizer, T, 1)
    texts = [e.text for e in held[: int(mcfg.latency_checks)]]
    one(params, texts[:1])  # compile
    times = []
    for text in texts:
        t = time.perf_counter()
        one(params, [text])
        times.append(time.perf_counter() - t)
    summary = {
        "stage": STAGE, "parent": config.parent,
        **ours,
        **{f"baseline_{k}": v for k, v in base.items()},
        "beats_baseline": ours["auroc"] > base["auroc"],
        "flagged_by_source": flagged_by_source(held, held_probs, threshold),
        "ms_per_check": 1e3 * float(np.median(times)),
        "threshold": threshold,
        "examples": {s: {"harmful": sum(e.label for e in xs),
                         "benign": sum(1 - e.label for e in xs)} for s, xs in data.items()},
        "final_train_loss": result.last_train.get("loss"),
        "final_train_accuracy": result.last_train.get("accuracy"),
        "heldout_loss": result.last_eval.get("eval_loss"),
        "tokens_per_sec": result.tokens_per_sec,
        "compile_seconds": result.compile_seconds,
        "final_eval_seconds": time.perf_counter() - t_eval,
        "wall_seconds": time.perf_counter() - t_start,
        "steps": tcfg.total_steps,
    }
    write_summary(stage_dir, summary)
    return summary
