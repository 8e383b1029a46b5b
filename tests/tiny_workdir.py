"""A tiny real workdir for tests that need trained stages: a BPE tokenizer on a slice of the
shipped LIMA conversations, a 2-step synthetic pretrain and a 4-step SFT (tests/configs/), the
same recipe as tests/test_sft_reward_stages.py, plus an untrained reward model (the SFT trunk and
a random head: training one would add a minute and nothing that these tests check)."""
import importlib.util
from pathlib import Path

from gpt_jax.tokenizer import train_bpe

REPO = Path(__file__).resolve().parent.parent


def config_from_tests(name: str):
    """get_config() of tests/configs/<name>.py."""
    spec = importlib.util.spec_from_file_location(name, REPO / "tests" / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def build_tiny_workdir(workdir: Path, data_dir: Path, sft: bool = True) -> Path:
    """tokenizer/ + pretrain/ (+ sft/) in `workdir`."""
    from gpt_jax.train import pretrain
    from gpt_jax.train import sft as sft_stage

    text = (data_dir / "sft/lima/lima.json").read_text()[:100_000]
    tok = train_bpe([text[i: i + 2000] for i in range(0, len(text), 2000)], vocab_size=600)
    (workdir / "tokenizer").mkdir(parents=True, exist_ok=True)
    tok.save(workdir / "tokenizer" / "tokenizer.json")
    pre = config_from_tests("sft_test")
    pre.stage, pre.train.data_source, pre.train.total_steps = "pretrain", "synthetic", 2
    pretrain.run(pre, str(workdir))
    if sft:
        sft_stage.run(config_from_tests("sft_test"), str(workdir))
    return workdir


_BUILT: dict[str, Path] = {}


def shared_tiny_workdir(tmp_path_factory, data_dir) -> Path:
    """One tiny workdir (tokenizer, pretrain, sft, untrained reward) per pytest session, however
    many test modules ask for it."""
    key = str(tmp_path_factory.getbasetemp())
    if key not in _BUILT:
        workdir = build_tiny_workdir(tmp_path_factory.mktemp("tiny_run"), data_dir)
        add_untrained_reward_stage(workdir)
        _BUILT[key] = workdir
    return _BUILT[key]


def add_untrained_reward_stage(workdir: Path, seed: int = 0) -> None:
    """reward/ with the SFT trunk and a random head, saved as reward.run saves its final model
    (no training: enough for code that only loads and applies a reward model)."""
    import json

    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from gpt_jax.checkpoint import Checkpointer, load_stage
    from gpt_jax.heads import RewardModel

    model_config, trunk = load_stage(workdir, "sft")
    init = RewardModel(model_config).init(jax.random.key(seed), jnp.zeros((1, 4), jnp.int32))
    head = jax.tree.map(lambda x: x * 50.0, nn.unbox(init["params"]["head"]))  # visible spread
    stage_dir = workdir / "reward"
    stage_dir.mkdir(exist_ok=True)
    config = json.loads((workdir / "sft" / "config.json").read_text())
    config.update(stage="reward", parent="sft")
    config["train"]["seq_len"] = config["model"]["max_seq_len"]
    (stage_dir / "config.json").write_text(json.dumps(config))
    final = Checkpointer(stage_dir / "final", max_to_keep=1, async_save=False)
    final.save(0, {"params": {"trunk": trunk, "head": head}})
    final.close()
    (stage_dir / "summary.json").write_text(json.dumps({"stage": "reward", "untrained": True}))
