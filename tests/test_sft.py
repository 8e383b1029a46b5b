"""SFT loss: only assistant tokens count (zero gradient elsewhere), the masked mean equals a hand
computation on a two-turn conversation, and packed conversations do not see each other."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gpt_jax import sharding as shd
from gpt_jax.tokenizer import train_bpe
from gpt_jax.train.pretrain import build
from gpt_jax.train.sft import masked_lm_loss, sft_loss_fn

from helpers import tiny_config

TWO_TURNS = [
    {"role": "user", "content": "What is 2 + 3?"},
    {"role": "assistant", "content": "2 + 3 = 5.\nThe answer is 5."},
    {"role": "user", "content": "And times 4?"},
    {"role": "assistant", "content": "5 x 4 = 20."},
]


@pytest.fixture(scope="module")
def tok(data_dir):
    text = (data_dir / "sft/lima/lima.json").read_text()[:100_000]
    return train_bpe([text[i : i + 2000] for i in range(0, len(text), 2000)], vocab_size=600)


@pytest.fixture(scope="module")
def model_and_params():
    config = tiny_config(family="llama", seq_len=63)
    config.model.vocab_size = 640
    config.model.max_seq_len = 128
    built = build(config, shd.mesh_from_config(config.mesh), sft_loss_fn)
    import flax.linen as nn
    params = nn.unbox(built.init_params(jax.random.key(0)))
    return built.model, params


def _row(tok, messages, width):
    ids, mask = tok.render_chat(messages)
    assert len(ids) <= width
    pad = width - len(ids)
    return (np.array(ids + [tok.pad_id] * pad, np.int32), np.array(mask + [0] * pad, np.int32),
            np.array([1] * len(ids) + [0] * pad, np.int32),
            np.array(list(range(len(ids))) + [0] * pad, np.int32))


def test_masked_loss_equals_hand_computation_on_two_turns(tok, model_and_params):
    model, params = model_and_params
    tokens, mask, seg, pos = _row(tok, TWO_TURNS, 64)
    batch = {k: jnp.asarray(v[None]) for k, v in
             dict(tokens=tokens, loss_mask=mask, segment_ids=seg, positions=pos).items()}
    loss, aux = sft_loss_fn(model, 0.0)(params, batch, None)
    logits = np.asarray(model.apply({"params": params}, batch["tokens"][:, :-1],
                                    positions=batch["positions"][:, :-1],
                                    segment_ids=batch["segment_ids"][:, :-1]))[0].astype(np.float64)
    # By hand: average of -log softmax(logits[t])[tokens[t+1]] over t with mask[t+1] == 1.
    terms = []
    for t in range(63):
        if mask[t + 1]:
            z = logits[t] - logits[t].max()
            terms.append(-(z[tokens[t + 1]] - np.log(np.exp(z).sum())))
    n_assistant = sum(len(tok.encode(m["content"])) + 1 for m in TWO_TURNS if m["role"] == "assistant")
    assert len(terms) == n_assistant == int(aux["num_tokens"])  # reply tokens + end token, per turn
    assert float(loss) == pytest.approx(np.mean(terms), rel=1e-5)


def test_tokens_outside_the_mask_get_zero_gradient(tok, model_and_params):
    model, params = model_and_params
    tokens, mask, seg, pos = _row(tok, TWO_TURNS, 64)
    logits = model.apply({"params": params}, jnp.asarray(tokens[None, :-1]),
                         positions=jnp.asarray(pos[None, :-1]),
                         segment_ids=jnp.asarray(seg[None, :-1]))
    targets, tmask = jnp.asarray(tokens[None, 1:]), jnp.asarray(mask[None, 1:])
    g = np.asarray(jax.grad(lambda lg: masked_lm_loss(lg, targets, tmask))(logits))[0]
    per_position = np.abs(g).sum(-1)
    assert (per_position[tmask[0] == 0] == 0).all()  # user, system, special and padding targets
    assert (per_position[tmask[0] == 1] > 0).all()
    # Through the model: tokens that are neither inputs to nor targets of a masked position (the
    # padding after the conversation) do not change any parameter gradient.
    loss_fn = sft_loss_fn(model, 0.0)
    batch = {k: jnp.asarray(v[None]) for k, v in
             dict(tokens=tokens, loss_mask=mask, segment_ids=seg, positions=pos).items()}
    last = int(np.nonzero(seg)[0].max())
    altered = dict(batch, tokens=batch["tokens"].at[0, last + 1:].set(7))  # padding region
    grad = jax.jit(jax.grad(lambda p, b: loss_fn(p, b, None)[0]))
    g1, g2 = grad(params, batch), grad(params, altered)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_packed_conversations_are_independent(tok, model_and_params):
    """Two conversations packed in one row give the same summed loss as each alone."""
    model, params = model_and_params
    other = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there!"}]
    loss_fn = sft_loss_fn(model, 0.0)

    def summed(rows):
        b = {k: jnp.asarray(np.stack([r[i] for r in rows]))
             for i, k in enumerate(("tokens", "loss_mask", "segment_ids", "positions"))}
        loss, aux = loss_fn(params, b, None)
        return float(loss) * float(aux["num_tokens"])

    a, b = _row(tok, TWO_TURNS, 128), _row(tok, other, 128)
    na, nb = int(a[2].sum()), int(b[2].sum())
    rest = 128 - na - nb
    zeros = np.zeros(rest, np.int32)
    packed = (np.concatenate([a[0][:na], b[0][:nb], zeros + tok.pad_id]),
              np.concatenate([a[1][:na], b[1][:nb], zeros]),
              np.concatenate([a[2][:na], 2 * b[2][:nb], zeros]),
              np.concatenate([a[3][:na], b[3][:nb], zeros]))
    assert summed([packed]) == pytest.approx(summed([a]) + summed([b]), rel=1e-5)
