"""SFT, tiny preset: the pretrain_tiny model fine-tuned on the SFT mix + arithmetic demonstrations
+ answer-from-context conversations (the retrieval memory's task).

Why 960 steps (of 8 x 256 tokens): learning to read the question's numbers into the column
method comes late and suddenly in SFT, as copying does in pretraining. With 240 steps the SFT
model's held-out L1 cot accuracy was 0.02-0.045 in four runs; with 480 steps 0.425-0.545 and L2
cot ~0.02; with 960 steps, on make run's pretrained model, L1 cot 0.805 / 0.795 and L2 cot 0.46 /
0.57 over two SFT seeds (docs/arithmetic.md, "SFT steps").

python -m gpt_jax.main --config=experiments/configs/sft_tiny.py --workdir=runs/x
  (needs runs/x/tokenizer and runs/x/pretrain from the tokenizer and pretrain stages)
"""
import ml_collections

from gpt_jax import configs
from gpt_jax.data.tasks_data import tasks_config
from gpt_jax.recipe import load_experiment
from gpt_jax.train.sft import samples_config


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.stage = "sft"
    config.parent = "pretrain"
    config.seed = 0
    config.model = load_experiment("pretrain_tiny").model  # must equal the parent's
    config.mesh = configs.mesh_config()
    config.optim = configs.optim_config(name="muon", learning_rate=1e-3, warmup_steps=20)
    config.train = configs.train_config(batch_size=8, seq_len=256, total_steps=960,
                                        log_every=10, eval_every=80, eval_batches=4,
                                        checkpoint_every=80)
    config.distributed = configs.distributed_config()
    configs.attach_data(config)
    # The arithmetic task in every level and mode (gpt_jax/tasks/arithmetic.py): 4/5 of the
    # SFT tokens (demo_weight 4 against the conversation sets' 1).
    config.tasks = tasks_config("arithmetic", demo_weight=4.0)
    # Answer from retrieved context (the retrieval memory, gpt_jax/memory): about 1 in 6
    # conversations, short ones (a question, three facts, the fact copied back).
    config.tasks.context.weight = 1.0
    config.samples = samples_config(eval_problems=32, max_new_tokens=128)
    return config
