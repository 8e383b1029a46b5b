"""The recipe presets compose correctly: every stage of recipe_small and recipe_smoke overrides
only keys the tiny stage configs define (a misspelt key would silently add a new one), all stages
share the pretrained model, and the small pretraining step compiles on one device."""
import jax
import pytest

from gpt_jax.aot import compile_plan
from gpt_jax.model import GPTConfig
from gpt_jax.recipe import load_experiment


def _flat_keys(config, prefix=""):
    keys = set()
    for key, value in config.items():
        name = f"{prefix}{key}"
        keys.add(name)
        if hasattr(value, "items") and not key.endswith("weights"):
            keys |= _flat_keys(value, name + ".")
    return keys


@pytest.mark.parametrize("preset", ["recipe_small", "recipe_smoke"])
def test_preset_overrides_only_known_keys(preset):
    tiny, other = load_experiment("recipe_tiny"), load_experiment(preset)
    assert other.stages == tiny.stages
    for stage in tiny.stages.split(","):
        assert _flat_keys(other[stage]) == _flat_keys(tiny[stage]), stage


def test_small_preset_is_gpt2_124m_class():
    config = load_experiment("recipe_small")
    model = GPTConfig.from_config(config.pretrain.model)
    assert model.vocab_size == config.tokenizer.tokenizer.vocab_size == 32_768
    assert 105e6 < model.num_params() < 130e6, model.num_params()
    for stage in ("sft", "reward", "ppo", "bon", "feedme"):
        assert config[stage].model == config.pretrain.model, stage


@pytest.mark.slow
def test_small_pretrain_step_compiles():
    config = load_experiment("recipe_small").pretrain
    config.mesh.update(data=1, fsdp=1, tensor=1)
    plan = compile_plan(config)
    assert plan["devices"] == 1 and plan["num_params"] == GPTConfig.from_config(
        config.model).num_params()
    # params + Adam moments in float32: about 12 bytes a parameter on the one device
    assert plan["per_device_memory"]["arguments_gib"] * 2**30 > 12 * plan["num_params"] * 0.99
    assert jax.devices()[0].platform == "cpu"


def test_context_preset_trains_the_context_task_alone():
    tiny, ctx = load_experiment("recipe_tiny"), load_experiment("recipe_context_tiny")
    assert ctx.stages == "tokenizer,pretrain,sft,memory"
    for stage in ctx.stages.split(","):
        assert _flat_keys(ctx[stage]) == _flat_keys(tiny[stage]), stage
    assert ctx.pretrain == tiny.pretrain  # the same pretrained model as make run's
    assert set(ctx.sft.data.sft_weights.values()) == {0.0} and ctx.sft.tasks.demo_weight == 0
    assert ctx.sft.tasks.context.weight > 0 and ctx.sft.train.total_steps == 2000


def test_seeds_presets_override_only_known_keys_and_seed_0_is_make_runs():
    from gpt_jax.recipe_seeds import SECTIONS, seeded

    tiny, smoke = load_experiment("recipe_tiny"), load_experiment("recipe_smoke")
    kind = {"reward_weak": "reward", "ppo_weak": "ppo", "ppo_ptx": "ppo", "grpo_rm": "grpo"}
    for name, base in (("recipe_seeds", tiny), ("recipe_seeds_smoke", smoke)):
        recipe = load_experiment(name).recipe
        assert recipe.stages == ",".join(SECTIONS) and recipe.report is False
        for section in SECTIONS:
            stage = kind.get(section, section)
            assert recipe[section].stage == stage, (name, section)
            reference = base[stage] if stage in base else load_experiment(f"{stage}_tiny")
            assert _flat_keys(recipe[section]) == _flat_keys(reference), (name, section)
    seed0 = seeded(load_experiment("recipe_seeds").recipe, 0)
    for stage in tiny.stages.split(","):  # seed 0 trains exactly make run's stages
        if stage in seed0 and stage != "compare":  # compare: more models
            assert seed0[stage] == tiny[stage], stage
    seed2 = seeded(load_experiment("recipe_seeds").recipe, 2)
    assert {seed2[s].seed for s in SECTIONS if s not in ("tokenizer", "compare")} == {2}
    assert seed2.compare.seed == tiny.compare.seed
