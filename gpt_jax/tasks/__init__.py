"""Verifiable tasks: problems with checkable answers, as chat prompts and SFT demonstrations.

    task = get_task("arithmetic", levels="L1:0.5,L2:0.5")
    train = task.problems("train", 1000, seed=0)     # disjoint from task.problems("heldout", ...)
    messages = task.prompt_messages(train[0])          # [{"role": "user", ...}] for sampling
    demo = task.demonstration(train[0])                 # + {"role": "assistant", chain of thought}
    gpt_jax.labeler.gold_score(train[0], completion_text)   # the programmatic reward

Tasks: "arithmetic" (generated from a seed, gpt_jax/tasks/arithmetic.py) and "gsm8k" (shipped
data, gpt_jax/tasks/gsm8k.py; pass cache_dir=).
"""
from __future__ import annotations

from gpt_jax.tasks import drills
from gpt_jax.tasks.arithmetic import ArithmeticTask
from gpt_jax.tasks.base import (Problem, check_equations, demonstration, parse_answer,
                                prompt_messages)
from gpt_jax.tasks.gsm8k import Gsm8kTask

TASKS = {"arithmetic": ArithmeticTask, "gsm8k": Gsm8kTask}


def get_task(name: str, **kwargs):
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; known: {sorted(TASKS)}")
    return TASKS[name](**kwargs)


__all__ = ["TASKS", "ArithmeticTask", "Gsm8kTask", "Problem", "check_equations", "demonstration", "drills",
           "get_task", "parse_answer", "prompt_messages"]
