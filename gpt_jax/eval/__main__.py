"""`python -m gpt_jax.eval --workdir=runs/tiny [--stages=pretrain,sft] [--suites=mmlu,bpb]
[--limit=N]`: scores the stages (see `gpt_jax.eval.harness`), writes `<workdir>/eval/summary.json`
and refreshes the workdir's report."""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    from gpt_jax.eval import harness

    p = argparse.ArgumentParser(prog="python -m gpt_jax.eval", description=__doc__)
    p.add_argument("--workdir", required=True)
    p.add_argument("--stages", default="", help=f"comma-separated, of {list(harness.STAGES)} "
                   "(default: every finished one)")
    p.add_argument("--suites", default=",".join(harness.SUITES),
                   help=f"comma-separated, of {list(harness.SUITES)}")
    p.add_argument("--limit", type=int, default=0, help="per unit (MMLU questions per subject, "
                   "bpb documents per source, problems per level, RM prompts); 0 = all")
    p.add_argument("--mmlu-shots", type=int, default=5)
    p.add_argument("--no-report", action="store_true", help="do not rewrite REPORT.md")
    args = p.parse_args(argv)
    c = harness.eval_config(stages=args.stages, suites=args.suites, limit=args.limit,
                            mmlu_shots=args.mmlu_shots)
    try:
        summary = harness.run(c, args.workdir)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"eval: wrote {args.workdir}/eval/summary.json ({summary['wall_seconds']:.0f} s)")
    if not args.no_report:
        from gpt_jax.report import write_report

        print(f"eval: report {write_report(args.workdir)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
