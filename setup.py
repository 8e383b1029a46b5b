"""gpt_jax: the ChatGPT recipe (data -> pretrain -> SFT -> reward model -> RLHF) in JAX/Flax.

Versions are pinned to a set that was installed and tested together (CPU, Python 3.11).
Extras: `test` (pytest, hypothesis, notebooks), `hf` (torch CPU + transformers, for reference
tests and benchmarks), `cuda` (jax with its CUDA 12 plugin for GPU users).
"""
from setuptools import find_packages, setup

JAX_VERSION = "0.10.2"

setup(
    name="gpt_jax",
    version="0.1.0",
    description="The ChatGPT recipe end to end in JAX/Flax: pretraining, SFT, reward modeling, RLHF.",
    python_requires=">=3.11",
    packages=find_packages(include=["gpt_jax", "gpt_jax.*"]),
    package_data={"gpt_jax.serve": ["static/*"]},  # the web chat page
    install_requires=[
        f"jax=={JAX_VERSION}",
        f"jaxlib=={JAX_VERSION}",
        "flax==0.12.8",
        "optax==0.2.8",
        "orbax-checkpoint==0.12.8",
        "ml_collections==1.1.0",
        "chex==0.1.92",
        "absl-py==2.5.1",
        "tokenizers==0.23.3",
        "tiktoken==0.14.0",
        "grain==0.2.18",
        "tensorflow-datasets==4.9.10",
        "array_record==0.8.6",
        "numpy==2.4.6",
        "tqdm==4.70.1",
        "tensorboardX==2.6.5",
        "matplotlib==3.11.2",
        "safetensors==0.8.0",
        "simpleeval==1.0.8",
        # the OpenAI-compatible server (gpt_jax.serve)
        "fastapi==0.163.2",
        "uvicorn==0.54.0",
        # structured output (gpt_jax.structured) and its validation suite
        "llguidance==1.9.1",
        "jsonschema==4.26.0",
        # the moderation stage's TF-IDF + logistic-regression baseline and its metrics
        "scikit-learn==1.9.1",
        "bm25s==0.3.16",  # retrieval memory (gpt_jax/memory)
    ],
    extras_require={
        "test": [
            "pytest==9.2.0",
            "pytest-xdist==3.8.0",
            "execnet==2.1.2",
            "hypothesis==6.170.15",
            "nbclient==0.11.0",
            "nbformat==5.11.1",
            "ipykernel==7.4.0",
            "openai==3.51.0",
            "playwright==1.65.2",  # drives Debian's chromium (make test installs it)
        ],
        "hf": ["torch==2.13.0", "transformers==5.23.0"],
        "cuda": [f"jax[cuda12]=={JAX_VERSION}"],
    },
)
