"""gpt_jax: the ChatGPT recipe end to end in JAX/Flax.

Stages (each a pure `train_step` on one shared loop): tokenizer -> pretrain -> sft -> reward -> ppo.
Importing the package does not import jax, so entry points can configure XLA (e.g. simulated devices)
before the first `import jax`.
"""

__version__ = "0.1.0"
