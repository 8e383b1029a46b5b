"""HF transformers interchange: random-weight torch models -> ours -> logits within 1e-4, and back."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from gpt_jax import hf  # noqa: E402
from gpt_jax.model import GPT  # noqa: E402

TOL = 1e-4


def _gpt2():
    cfg = transformers.GPT2Config(vocab_size=211, n_positions=64, n_embd=64, n_layer=3, n_head=4,
                                  bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(cfg).eval()


def _llama(kv_heads, tied=False):
    cfg = transformers.LlamaConfig(vocab_size=211, hidden_size=64, intermediate_size=96,
                                   num_hidden_layers=3, num_attention_heads=8,
                                   num_key_value_heads=kv_heads, max_position_embeddings=64,
                                   rope_theta=10000.0, rms_norm_eps=1e-6,
                                   tie_word_embeddings=tied, bos_token_id=0, eos_token_id=0)
    return transformers.LlamaForCausalLM(cfg).eval()


MODELS = {"gpt2": _gpt2, "llama_mha": lambda: _llama(8), "llama_gqa": lambda: _llama(2),
          "llama_mqa_tied": lambda: _llama(1, tied=True)}


def _tokens(seed=0, shape=(3, 37), vocab=211):
    return np.random.default_rng(seed).integers(0, vocab, size=shape)


def _torch_logits(model, tokens):
    with torch.no_grad():
        return model(torch.from_numpy(tokens)).logits.numpy()


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("scan", [True, False])
def test_from_hf_logits_match(name, scan):
    torch.manual_seed(0)
    model = MODELS[name]()
    config, params = hf.from_hf(model, scan_layers=scan)
    tokens = _tokens()
    ours = np.asarray(GPT(config).apply({"params": params}, jnp.asarray(tokens)))
    np.testing.assert_allclose(ours, _torch_logits(model, tokens), atol=TOL, rtol=0)


@pytest.mark.parametrize("name", list(MODELS))
def test_to_hf_round_trip(name):
    torch.manual_seed(1)
    config, _ = hf.from_hf(MODELS[name]())
    variables = GPT(config).init(jax.random.key(3), jnp.zeros((1, 8), jnp.int32))
    params = jax.tree.map(np.asarray, nn.unbox(variables["params"]))
    tokens = _tokens(1)
    ours = np.asarray(GPT(config).apply({"params": params}, jnp.asarray(tokens)))
    back = hf.to_hf(config, params)
    np.testing.assert_allclose(_torch_logits(back, tokens), ours, atol=TOL, rtol=0)
    config2, params2 = hf.from_hf(back)
    assert config2 == config
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(params2)):
        np.testing.assert_array_equal(a, b, err_msg=str(path))


def test_safetensors_round_trips(tmp_path):
    torch.manual_seed(2)
    model = MODELS["llama_gqa"]()
    config, params = hf.from_hf(model)
    hf.save_params(str(tmp_path / "p.safetensors"), params)
    loaded = hf.load_params(str(tmp_path / "p.safetensors"))
    assert jax.tree.structure(loaded) == jax.tree.structure(params)
    jax.tree.map(np.testing.assert_array_equal, loaded, params)
    hf.save_hf(config, params, str(tmp_path / "hf"))
    config2, params2 = hf.load_hf(str(tmp_path / "hf"))
    assert config2 == config
    jax.tree.map(np.testing.assert_array_equal, params2, params)
