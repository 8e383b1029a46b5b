"""Evaluations shared by every stage: `arith` scores any policy on the arithmetic task's held-out
sets (accuracy per level x mode, pass@k, format validity)."""
