"""`python -m gpt_jax.report --workdir=<workdir>`: writes <workdir>/REPORT.md.

Why this file: gpt_jax.report is a package, and `python -m` runs a package's __main__ module.
"""
from gpt_jax.report import main

if __name__ == "__main__":
    raise SystemExit(main())
