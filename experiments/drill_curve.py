"""How many drill tokens does a small model need before it adds? A learning curve on the pretraining
drills alone (gpt_jax/tasks/drills.py), with the held-out probes of `drills.drill_probe` every
`--every` steps: worked (column method) and plain (one step) exact match on 200 held-out 2-digit
additions and subtractions.

It trains the project's model (any width / depth / family) on a character vocabulary: the BPE
tokenizer already cuts drills into single characters (one digit, space or sign per token), so the
token counts are the recipe's, at a fraction of the cost of an 8k-id head. One JSON row per probe
goes to --out; --plot draws every given JSONL file as one curve (worked accuracy vs tokens).

  python experiments/drill_curve.py --out runs/curves/b16.jsonl --batch 16 --steps 1250
  python experiments/drill_curve.py --out runs/curves/muon.jsonl --optim muon --steps 1000
  python experiments/drill_curve.py --plot docs/figures/drill_curve.png runs/curves/*.jsonl
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CHARS = sorted(set("0123456789 +-*=?.\n"))
EOS = len(CHARS)


def encode(text: str) -> list[int]:
    return [CHARS.index(c) for c in text]


def decode(ids) -> str:
    return "".join(CHARS[i] if i < len(CHARS) else "|" for i in ids)


def probe_prompts(pairs, spaces: bool) -> dict[str, list[str]]:
    """The pretraining probe's prompts (`drills.PROBE_ASKS`), without spaces for unspaced drills."""
    from gpt_jax.tasks import drills

    out = {kind: [ask.format(a=a, op=op, b=b) for op, a, b in pairs]
           for kind, (ask, _) in drills.PROBE_ASKS.items()}
    return out if spaces else {k: [p.replace(" ", "") for p in v] for k, v in out.items()}


def train(args) -> None:
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import optax

    from gpt_jax import configs
    from gpt_jax.model import GPT, GPTConfig
    from gpt_jax.tasks import drills
    from gpt_jax.train.optim import make_optimizer

    drills.KINDS = (("worked", args.worked_share), ("plain", 1 - args.worked_share))
    docs = drills.drill_documents("train", args.docs, seed=1)
    if not args.spaces:
        docs = [d.replace(" ", "") for d in docs]
    stream = np.asarray([t for d in docs for t in [EOS, *encode(d)]], np.int32)
    cfg = GPTConfig(family=args.family, vocab_size=32, max_seq_len=max(args.seq, 96),
                    n_layers=args.layers, d_model=args.d_model, n_heads=args.heads,
                    scan_layers=False)
    model = GPT(cfg)
    params = nn.unbox(model.init(jax.random.key(args.seed), jnp.zeros((1, args.seq), jnp.int32))
                      ["params"])
    optim = configs.optim_config(learning_rate=args.lr, warmup_steps=50, name=args.optim)
    tx, _ = make_optimizer(optim, args.steps)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, batch):
        def loss_fn(p):
            logits = model.apply({"params": p}, batch[:, :-1])
            return optax.softmax_cross_entropy_with_integer_labels(logits, batch[:, 1:]).mean()
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    @jax.jit
    def next_tokens(params, tokens):
        return jnp.argmax(model.apply({"params": params}, tokens), -1)

    pairs = drills.probe_pairs(200)
    prompts = probe_prompts(pairs, args.spaces)

    def greedy(texts: list[str], n_new: int, width: int = 96) -> list[str]:
        """Full-recompute greedy decoding (the model is tiny; no cache needed)."""
        rows = [[EOS, *encode(t)] for t in texts]
        tokens = np.zeros((len(rows), width), np.int32)
        lens = np.array([len(r) for r in rows])
        for i, r in enumerate(rows):
            tokens[i, :len(r)] = r
        idx = np.arange(len(rows))
        for k in range(n_new):
            cur = lens + k
            ok = cur < width
            pred = np.asarray(next_tokens(params, jnp.asarray(tokens)))
            tokens[idx[ok], cur[ok]] = pred[idx[ok], cur[ok] - 1]
        return [decode(tokens[i, lens[i]:lens[i] + n_new]) for i in idx]

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    t0 = time.time()
    with out.open("w") as f:
        for s in range(1, args.steps + 1):
            starts = rng.integers(0, len(stream) - args.seq - 1, args.batch)
            batch = jnp.asarray(np.stack([stream[i:i + args.seq + 1] for i in starts]))
            params, opt_state, loss = step(params, opt_state, batch)
            if s % args.every and s != args.steps:
                continue
            row = {"label": args.label or out.stem, "step": s, "tokens": s * args.batch * args.seq,
                   "loss": round(float(loss), 4), "seconds": round(time.time() - t0, 1)}
            # 44 new characters: a worked block with a 3-digit sum is 42 characters long
            for kind, n_new in (("plain", 6), ("worked", 44)):
                texts = greedy(prompts[kind], n_new)
                right = [drills.probe_is_right(kind, *pair, t, " " if args.spaces else "")
                         for pair, t in zip(pairs, texts)]
                row[kind] = sum(right) / len(right)
                row[f"{kind}_example"] = prompts[kind][0].split("\n")[-1] + texts[0]
            f.write(json.dumps(row) + "\n")
            f.flush()
            print(json.dumps({k: v for k, v in row.items() if "example" not in k}), flush=True)


def plot(path: str, files: list[str]) -> None:
    from gpt_jax.report_plots import _pyplot, _save

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for name in files:
        rows = [json.loads(line) for line in open(name)]
        ax.plot([r["tokens"] / 1e6 for r in rows], [r["worked"] for r in rows], marker="o",
                label=rows[0]["label"])
    ax.set_xlabel("drill tokens seen (millions)")
    ax.set_ylabel("held-out worked exact match")
    ax.set_title("Drills alone: 2-digit +/- by the column method")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize="small", framealpha=0.7)
    print(_save(fig, plt, Path(path)))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/curves/drills.jsonl")
    p.add_argument("--label", default="")
    p.add_argument("--plot", default="", help="write this PNG from the JSONL files given")
    p.add_argument("files", nargs="*")
    p.add_argument("--family", default="llama")
    p.add_argument("--d_model", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--steps", type=int, default=1250)
    p.add_argument("--every", type=int, default=250)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--docs", type=int, default=4000)
    p.add_argument("--worked_share", type=float, default=0.7)
    p.add_argument("--spaces", type=int, default=1)
    p.add_argument("--optim", default="adamw", help="adamw or muon (gpt_jax/train/optim.py)")
    args = p.parse_args(argv)
    if args.plot:
        plot(args.plot, args.files)
    else:
        train(args)


if __name__ == "__main__":
    main()
