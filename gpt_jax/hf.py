"""HF transformers interchange: GPT2LMHeadModel / LlamaForCausalLM <-> (GPTConfig, params).

`from_hf(model)` reads a torch model's config and state dict; `to_hf(config, params)` builds the
matching torch model with our weights. Both families, GQA included. Layouts differ only by
transposes and head reshapes:
- GPT-2 `Conv1D` stores weights as (in, out) and fuses q, k, v in `c_attn`;
- Llama `nn.Linear` stores (out, in); q/k use the same rotate-half RoPE convention as ours.

Also: `save_params` / `load_params` for our own pytrees as safetensors (flattened "a/b/c" keys), and
`save_hf` / `load_hf` for HF-format directories (config.json + model.safetensors).
torch and transformers are imported lazily: they are only needed for the interchange itself.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from gpt_jax.model import GPTConfig


def _np(t) -> np.ndarray:
    return t.detach().to("cpu").float().numpy()


def _stack_layers(layers: list[dict], scan: bool) -> dict:
    if scan:
        import jax

        return {"blocks": jax.tree.map(lambda *xs: np.stack(xs), *layers)}
    return {f"block_{i}": layer for i, layer in enumerate(layers)}


def _layer(params: dict, i: int, config: GPTConfig) -> dict:
    import jax

    if config.scan_layers:
        return jax.tree.map(lambda x: np.asarray(x[i]), params["blocks"])
    return jax.tree.map(np.asarray, params[f"block_{i}"])


def from_hf(hf_model, **overrides) -> tuple[GPTConfig, dict[str, Any]]:
    """Converts a transformers GPT2LMHeadModel or LlamaForCausalLM to (config, params)."""
    hf_cfg = hf_model.config
    sd = {k: _np(v) for k, v in hf_model.state_dict().items()}
    if hf_cfg.model_type == "gpt2":
        if hf_cfg.activation_function != "gelu_new":
            raise ValueError(f"unsupported GPT-2 activation {hf_cfg.activation_function!r}")
        config = GPTConfig(
            family="gpt2", vocab_size=hf_cfg.vocab_size, max_seq_len=hf_cfg.n_positions,
            n_layers=hf_cfg.n_layer, d_model=hf_cfg.n_embd, n_heads=hf_cfg.n_head,
            d_ff=hf_cfg.n_inner or 4 * hf_cfg.n_embd, norm_eps=hf_cfg.layer_norm_epsilon,
            **overrides,
        )
        return config, _gpt2_from_state_dict(sd, config)
    if hf_cfg.model_type == "llama":
        rope = getattr(hf_cfg, "rope_parameters", None) or {}
        config = GPTConfig(
            family="llama", vocab_size=hf_cfg.vocab_size,
            max_seq_len=hf_cfg.max_position_embeddings, n_layers=hf_cfg.num_hidden_layers,
            d_model=hf_cfg.hidden_size, n_heads=hf_cfg.num_attention_heads,
            n_kv_heads=hf_cfg.num_key_value_heads, d_ff=hf_cfg.intermediate_size,
            norm_eps=hf_cfg.rms_norm_eps,
            rope_theta=float(rope.get("rope_theta", getattr(hf_cfg, "rope_theta", 10000.0))),
            tie_embeddings=int(bool(hf_cfg.tie_word_embeddings)), **overrides,
        )
        if rope.get("rope_type", "default") != "default":
            raise ValueError(f"unsupported rope_type {rope['rope_type']!r}")
        if hf_cfg.head_dim != config.head_dim:
            raise ValueError("head_dim != hidden_size / num_attention_heads is not supported")
        return config, _llama_from_state_dict(sd, config)
    raise ValueError(f"unsupported model_type {hf_cfg.model_type!r}")


def _gpt2_from_state_dict(sd: dict, config: GPTConfig) -> dict:
    d, h, hd = config.d_model, config.n_heads, config.head_dim
    layers = []
    for i in range(config.n_layers):
        p = f"transformer.h.{i}."
        w, b = sd[p + "attn.c_attn.weight"], sd[p + "attn.c_attn.bias"]
        attn = {}
        for j, name in enumerate("qkv"):
            attn[name] = w[:, j * d:(j + 1) * d].reshape(d, h, hd)
            attn[f"{name}_bias"] = b[j * d:(j + 1) * d].reshape(h, hd)
        attn["o"] = sd[p + "attn.c_proj.weight"].reshape(h, hd, d)
        attn["o_bias"] = sd[p + "attn.c_proj.bias"]
        layers.append({
            "ln_1": {"scale": sd[p + "ln_1.weight"], "bias": sd[p + "ln_1.bias"]},
            "attn": attn,
            "ln_2": {"scale": sd[p + "ln_2.weight"], "bias": sd[p + "ln_2.bias"]},
            "mlp": {"fc": sd[p + "mlp.c_fc.weight"], "fc_bias": sd[p + "mlp.c_fc.bias"],
                    "proj": sd[p + "mlp.c_proj.weight"], "proj_bias": sd[p + "mlp.c_proj.bias"]},
        })
    return {
        "wte": sd["transformer.wte.weight"], "wpe": sd["transformer.wpe.weight"],
        **_stack_layers(layers, config.scan_layers),
        "ln_f": {"scale": sd["transformer.ln_f.weight"], "bias": sd["transformer.ln_f.bias"]},
    }


def _llama_from_state_dict(sd: dict, config: GPTConfig) -> dict:
    d, h, kv, hd = config.d_model, config.n_heads, config.kv_heads, config.head_dim
    layers = []
    for i in range(config.n_layers):
        p = f"model.layers.{i}."
        layers.append({
            "ln_1": {"scale": sd[p + "input_layernorm.weight"]},
            "attn": {
                "q": sd[p + "self_attn.q_proj.weight"].T.reshape(d, h, hd),
                "k": sd[p + "self_attn.k_proj.weight"].T.reshape(d, kv, hd),
                "v": sd[p + "self_attn.v_proj.weight"].T.reshape(d, kv, hd),
                "o": sd[p + "self_attn.o_proj.weight"].T.reshape(h, hd, d),
            },
            "ln_2": {"scale": sd[p + "post_attention_layernorm.weight"]},
            "mlp": {"gate": sd[p + "mlp.gate_proj.weight"].T, "up": sd[p + "mlp.up_proj.weight"].T,
                    "proj": sd[p + "mlp.down_proj.weight"].T},
        })
    params = {
        "wte": sd["model.embed_tokens.weight"],
        **_stack_layers(layers, config.scan_layers),
        "ln_f": {"scale": sd["model.norm.weight"]},
    }
    if not config.tied:
        params["lm_head"] = sd["lm_head.weight"].T
    return params


def to_hf(config: GPTConfig, params: dict):
    """Builds the transformers model (float32, eval mode) holding these weights."""
    import torch
    import transformers

    d, f = config.d_model, config.ff_dim
    sd: dict[str, np.ndarray] = {}
    if config.family == "gpt2":
        hf_cfg = transformers.GPT2Config(
            vocab_size=config.vocab_size, n_positions=config.max_seq_len, n_embd=d,
            n_layer=config.n_layers, n_head=config.n_heads, n_inner=f,
            layer_norm_epsilon=config.norm_eps, activation_function="gelu_new",
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
            bos_token_id=0, eos_token_id=0,
        )
        model = transformers.GPT2LMHeadModel(hf_cfg)
        sd["transformer.wte.weight"] = params["wte"]
        sd["transformer.wpe.weight"] = params["wpe"]
        for i in range(config.n_layers):
            p, layer = f"transformer.h.{i}.", _layer(params, i, config)
            a = layer["attn"]
            sd[p + "attn.c_attn.weight"] = np.concatenate([a[n].reshape(d, d) for n in "qkv"], 1)
            sd[p + "attn.c_attn.bias"] = np.concatenate([a[f"{n}_bias"].reshape(d) for n in "qkv"])
            sd[p + "attn.c_proj.weight"] = a["o"].reshape(d, d)
            sd[p + "attn.c_proj.bias"] = a["o_bias"]
            for ln in ("ln_1", "ln_2"):
                sd[p + f"{ln}.weight"], sd[p + f"{ln}.bias"] = layer[ln]["scale"], layer[ln]["bias"]
            m = layer["mlp"]
            sd[p + "mlp.c_fc.weight"], sd[p + "mlp.c_fc.bias"] = m["fc"], m["fc_bias"]
            sd[p + "mlp.c_proj.weight"], sd[p + "mlp.c_proj.bias"] = m["proj"], m["proj_bias"]
        sd["transformer.ln_f.weight"] = params["ln_f"]["scale"]
        sd["transformer.ln_f.bias"] = params["ln_f"]["bias"]
        sd["lm_head.weight"] = params["wte"]
    else:
        hf_cfg = transformers.LlamaConfig(
            vocab_size=config.vocab_size, hidden_size=d, intermediate_size=f,
            num_hidden_layers=config.n_layers, num_attention_heads=config.n_heads,
            num_key_value_heads=config.kv_heads, max_position_embeddings=config.max_seq_len,
            rms_norm_eps=config.norm_eps, rope_theta=config.rope_theta,
            tie_word_embeddings=config.tied, bos_token_id=0, eos_token_id=0,
        )
        model = transformers.LlamaForCausalLM(hf_cfg)
        sd["model.embed_tokens.weight"] = params["wte"]
        for i in range(config.n_layers):
            p, layer = f"model.layers.{i}.", _layer(params, i, config)
            a, m = layer["attn"], layer["mlp"]
            sd[p + "input_layernorm.weight"] = layer["ln_1"]["scale"]
            sd[p + "post_attention_layernorm.weight"] = layer["ln_2"]["scale"]
            for n in "qkv":
                sd[p + f"self_attn.{n}_proj.weight"] = a[n].reshape(d, -1).T
            sd[p + "self_attn.o_proj.weight"] = a["o"].reshape(-1, d).T
            sd[p + "mlp.gate_proj.weight"] = m["gate"].T
            sd[p + "mlp.up_proj.weight"] = m["up"].T
            sd[p + "mlp.down_proj.weight"] = m["proj"].T
        sd["model.norm.weight"] = params["ln_f"]["scale"]
        sd["lm_head.weight"] = params["wte"] if config.tied else np.asarray(params["lm_head"]).T
    state = {k: torch.from_numpy(np.array(v, np.float32, copy=True)) for k, v in sd.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("attn.bias") and not k.endswith("masked_bias")]
    if missing or unexpected:
        raise ValueError(f"HF conversion mismatch: missing={missing} unexpected={unexpected}")
    return model.eval()


def flatten(params: dict, prefix: str = "") -> dict[str, np.ndarray]:
    out = {}
    for k, v in params.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "/"))
        else:
            out[key] = np.asarray(v)
    return out


def unflatten(flat: dict[str, np.ndarray]) -> dict:
    out: dict = {}
    for key, v in flat.items():
        node = out
        *parents, leaf = key.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
    return out


def save_params(path: str, params: dict) -> None:
    """Our param pytree as a safetensors file (keys like "blocks/attn/q")."""
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v) for k, v in flatten(params).items()}, path)


def load_params(path: str) -> dict:
    from safetensors.numpy import load_file

    return unflatten(load_file(path))


def save_hf(config: GPTConfig, params: dict, directory: str) -> None:
    """An HF-format directory (config.json + model.safetensors) loadable by transformers."""
    to_hf(config, params).save_pretrained(directory, safe_serialization=True)


def load_hf(directory: str, **overrides) -> tuple[GPTConfig, dict]:
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(directory, local_files_only=True)
    return from_hf(model, **overrides)
