"""Evaluations: `python -m gpt_jax.eval` (`harness`) scores any stage on standard benchmarks and
the project's own tasks; `arith` scores any policy on the arithmetic task's held-out sets (shared
with the compare stage); `structured_suite` is the structured-output validation suite."""
