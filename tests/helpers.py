"""Small configs shared by the core tests (random tokens; no tokenizer or data needed)."""
import ml_collections

from gpt_jax import configs


def tiny_config(family="llama", total_steps=3, **train) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.stage = "pretrain"
    config.seed = 0
    config.model = configs.model_config(
        family=family, vocab_size=256, max_seq_len=32, n_layers=2, d_model=64, n_heads=8,
        n_kv_heads=4 if family == "llama" else 0, d_ff=128)
    config.mesh = configs.mesh_config(1, 1, 1)
    config.optim = configs.optim_config(learning_rate=3e-3, warmup_steps=2)
    config.train = configs.train_config(
        batch_size=8, seq_len=16, total_steps=total_steps, log_every=1, eval_every=0,
        eval_batches=2, checkpoint_every=0, data_source="synthetic", progress_bar=False,
        tensorboard=False, peak_flops=1e11)
    config.train.update(train)
    config.distributed = configs.distributed_config()
    return config


CHAT_TEXT = ("The quick brown fox jumps over the lazy dog. A stitch in time saves nine. "
             "Hello world, hello there; how are you today? Numbers 12 34 56 78 and 23 + 45 = 68. "
             "Chinese too: 你好，世界。今天天气很好。\n")


def small_tokenizer():
    """A byte-level BPE of 300 ids trained on CHAT_TEXT (every byte reachable; seconds to build)."""
    from gpt_jax.tokenizer import train_bpe

    return train_bpe([CHAT_TEXT * 3], vocab_size=300, min_frequency=1)


def random_params(config, seed: int = 0, std: float = 0.3):
    """The model's params, every entry drawn from N(0, std) (a fixed, untrained model)."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import numpy as np

    from gpt_jax.model import GPT

    shapes = jax.eval_shape(GPT(config).init, jax.random.key(0), jnp.zeros((1, 1), jnp.int32))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: rng.normal(0, std, s.shape).astype(np.float32),
                        nn.unbox(shapes["params"]))


def random_model_workdir(workdir, config, stages=("sft",), seed: int = 0, std: float = 0.3):
    """A workdir with a BPE tokenizer and random-weight `stages` saved as finished stages (config,
    checkpoint, summary): what the chat CLI and the server load, without training anything."""
    import dataclasses
    import json

    from gpt_jax.checkpoint import Checkpointer
    from gpt_jax.metrics import write_summary

    small_tokenizer().save(workdir / "tokenizer" / "tokenizer.json")
    params = random_params(config, seed, std)
    for stage in stages:
        (workdir / stage).mkdir()
        (workdir / stage / "config.json").write_text(
            json.dumps({"model": dataclasses.asdict(config)}))
        ckpt = Checkpointer(workdir / stage / "checkpoints", async_save=False)
        ckpt.save(1, {"params": params}, wait=True)
        ckpt.close()
        write_summary(workdir / stage, {"step": 1})
    return workdir


def head_model_stage(workdir, config, stage: str, bias: float = 0.0, seq_len: int = 128,
                     summary: dict | None = None):
    """A finished `stage` holding a random-weight `heads.RewardModel` (trunk + scalar head, head
    bias `bias`) saved as the reward and moderation stages save theirs (`<stage>/final`)."""
    import dataclasses
    import json

    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import numpy as np

    from gpt_jax.checkpoint import Checkpointer
    from gpt_jax.heads import RewardModel
    from gpt_jax.metrics import write_summary

    shapes = jax.eval_shape(lambda: nn.unbox(RewardModel(config).init(
        jax.random.key(0), jnp.zeros((1, 1), jnp.int32))["params"]))
    rng = np.random.default_rng(5)
    params = jax.tree.map(lambda s: rng.normal(0, 0.3, s.shape).astype(np.float32), shapes)
    params["head"]["bias"] = np.full(params["head"]["bias"].shape, bias, np.float32)
    (workdir / stage).mkdir()
    (workdir / stage / "config.json").write_text(json.dumps(
        {"model": dataclasses.asdict(config), "train": {"seq_len": seq_len}}))
    final = Checkpointer(workdir / stage / "final", max_to_keep=1, async_save=False)
    final.save(0, {"params": params}, meta={"stage": stage})
    final.close()
    write_summary(workdir / stage, {"step": 1, **(summary or {})})
    return params


def load_test_config(name: str):
    """get_config() of tests/configs/<name>.py."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent / "configs" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def pretrained_workdir(workdir, data_dir):
    """`workdir` with a 600-id BPE (trained on LIMA) and a 2-step pretrain of the sft_test model
    on random tokens: what the stage tests build on."""
    from gpt_jax.tokenizer import train_bpe
    from gpt_jax.train import pretrain

    text = (data_dir / "sft/lima/lima.json").read_text()[:100_000]
    tok = train_bpe([text[i: i + 2000] for i in range(0, len(text), 2000)], vocab_size=600)
    (workdir / "tokenizer").mkdir()
    tok.save(workdir / "tokenizer" / "tokenizer.json")
    pre = load_test_config("sft_test")
    pre.stage, pre.train.data_source, pre.train.total_steps = "pretrain", "synthetic", 2
    pretrain.run(pre, str(workdir))
    return workdir


def webchat_config():
    """The web chat tests' model: tiny, with a 512-token context (long enough to stop a reply
    mid-stream, short enough to compile fast)."""
    from gpt_jax.model import GPTConfig

    return GPTConfig(family="llama", vocab_size=320, max_seq_len=512, n_layers=2, d_model=32,
                     n_heads=4, n_kv_heads=2, init_std=0.3)


def webchat_workdir(workdir, flag_everything: bool = False):
    """A workdir for the web chat tests: random-weight chat models `sft` and `dpo` with a 512-token
    context (replies long enough to stop mid-stream), and with `flag_everything` a moderation
    stage whose head flags every text."""
    config = webchat_config()
    random_model_workdir(workdir, config, stages=("sft", "dpo"))
    if flag_everything:
        head_model_stage(workdir, config, "moderation", bias=20.0, seq_len=32,
                         summary={"threshold": 0.5})
    return workdir


def sse_events(response):
    """The JSON events of an httpx streaming response (`data: {...}` lines), as they arrive."""
    import json

    for line in response.iter_lines():
        if line.startswith("data: "):
            yield json.loads(line[len("data: "):])


def long_greedy_prompt(server_url: str, api_key: str = "none", model: str = "sft",
                       tokens: int = 300) -> str:
    """A user message that the served random-weight `model` answers greedily with at least `tokens`
    tokens (no end token): a reply that is still streaming when a test presses Stop. Chosen by
    asking, so it holds whatever the weights' numerics on this machine."""
    import openai

    client = openai.OpenAI(base_url=f"{server_url}/v1", api_key=api_key, max_retries=0,
                           timeout=120)
    for k in range(40):
        prompt = f"Tell me a long story, number {k}."
        res = client.chat.completions.create(model=model, temperature=0, max_tokens=tokens,
                                             messages=[{"role": "user", "content": prompt}])
        if res.choices[0].finish_reason == "length":
            return prompt
    raise AssertionError(f"no prompt of 40 gets a {tokens}-token greedy reply from {model}")
