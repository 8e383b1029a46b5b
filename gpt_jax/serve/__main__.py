"""`python -m gpt_jax.serve --workdir=runs/tiny`: the OpenAI-compatible server (see README).

Serves every finished chat stage of the workdir (or `--stages`) under its stage name, on
127.0.0.1:8000 by default. Capacity: `--slots` rows decode together per model, `--max-queue`
rows (n choices = n rows) may wait for a slot beyond the free ones (then 429), `--timeout`
seconds per request, `--prefix-cache-mb` of
reusable KV per model (0 = off). `--tools` names the built-in tools that run inside decoding
(calculator, python). LoRA adapters (a workdir's lora_sft, `--adapters name=path[@stage]`) are
served as `<stage>+<name>` on the stage's one copy of the weights. `--api-key` (or GPT_JAX_API_KEY; several, comma-separated) requires
`Authorization: Bearer <key>`; each key sees only its own web-chat conversations. Without a key
the server binds to a loopback address only. The web chat at `/` keeps conversations in SQLite
(`--chat-db`, default <workdir>/chats.sqlite). Bodies over `--max-body-kb` are a 413.
`--max-requests` makes the server exit after that many requests (tests, benchmarks),
`--step-delay-ms` pauses after each decode step (tests that press Stop mid-reply);
`--stream-interval-ms` (20) sends a stream's tokens after the first at most that often while 8 or
more rows decode (like vLLM's stream interval: fewer SSE writes under load; TTFT unchanged);
`--compile-cache DIR` keeps XLA's compiled programs on disk, so a restart skips the warm-up's
compiles.
"""
from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m gpt_jax.serve", description=__doc__.split("\n")[0])
    p.add_argument("--workdir", required=True)
    p.add_argument("--stages", default="",
                   help="comma-separated (default: every finished chat stage)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--slots", type=int, default=16, help="decode slots per model")
    p.add_argument("--max-queue", type=int, default=64, help="rows that may wait for a slot")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per request")
    p.add_argument("--prefix-cache-mb", type=float, default=256.0)
    p.add_argument("--tools", default="calculator", help="built-in tools ('' = none)")
    p.add_argument("--adapters", default="",
                   help="comma-separated name=path[@stage] LoRA adapters, served as "
                        "<stage>+<name> on the stage's weights (finished lora stages of the "
                        "workdir are served so without it)")
    p.add_argument("--api-key", default=os.environ.get("GPT_JAX_API_KEY"),
                   help="comma-separated keys; each owns its web-chat conversations")
    p.add_argument("--chat-db", default=None,
                   help="the web chat's SQLite file (default <workdir>/chats.sqlite)")
    p.add_argument("--max-body-kb", type=int, default=1024, help="largest request body")
    p.add_argument("--max-requests", type=int, default=None)
    p.add_argument("--step-delay-ms", type=float, default=0.0,
                   help="pause after each decode step (tests that act while a reply streams; "
                        "demos of streaming)")
    p.add_argument("--stream-interval-ms", type=float, default=20.0,
                   help="while 8 or more rows decode, a stream's chunks after its first go out "
                        "at most this often, each with the tokens decoded since the last (fewer "
                        "writes under load; 0: always as soon as decoded)")
    p.add_argument("--overlap", default=True, action=argparse.BooleanOptionalAction,
                   help="dispatch each decode step before reading the last one back, so the "
                        "host's work runs beside the device's (--no-overlap: one after the other; "
                        "the same tokens)")
    p.add_argument("--compile-cache", default=None,
                   help="a directory for XLA's persistent compilation cache (restarts skip "
                        "compiling)")
    p.add_argument("--moderation", default=True, action=argparse.BooleanOptionalAction,
                   help="check inputs and replies with the workdir's moderation stage, when it "
                        "has one (also serves /v1/moderations)")
    p.add_argument("--log-level", default="warning")
    args = p.parse_args(argv)
    args.api_keys = [k for k in (args.api_key or "").split(",") if k]
    if not args.api_keys and args.host not in LOOPBACK:
        p.error(f"--host {args.host} without --api-key: without a key the server listens on "
                f"loopback only ({', '.join(LOOPBACK)})")
    return args


def freeze_heap() -> None:
    """Once the models are loaded and compiled: one full collection, then every object alive
    moves to the cyclic collector's permanent generation (`gc.freeze`). Loaded, the process holds
    JAX's and the models' objects by the hundred thousand, and each full collection walked them
    all: 130-320 ms with every thread stopped, two or three times a minute under load (measured,
    docs/serving.md). Later objects are collected as before; refcounting frees frozen ones too."""
    import gc

    gc.collect()
    gc.freeze()


def main(argv=None) -> None:
    import uvicorn

    from gpt_jax.serve.app import create_app
    from gpt_jax.serve.registry import load_models, load_moderator

    args = parse(argv)
    logging.basicConfig(level=args.log_level.upper())
    if args.compile_cache:
        import jax

        jax.config.update("jax_compilation_cache_dir", args.compile_cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.05)
    stages = [s for s in args.stages.split(",") if s] or None
    tools = [t for t in args.tools.split(",") if t]

    def load():
        models = load_models(args.workdir, stages, slots=args.slots, max_queue=args.max_queue,
                             prefix_cache_mb=args.prefix_cache_mb, tools=tools,
                             adapters=[a for a in args.adapters.split(",") if a],
                             step_delay_s=args.step_delay_ms / 1000, overlap=args.overlap)
        freeze_heap()
        return models

    app = create_app(load, api_keys=args.api_keys, timeout_s=args.timeout,
                     load_moderator=(lambda: load_moderator(args.workdir))
                     if args.moderation else None,
                     chat_db=args.chat_db or Path(args.workdir) / "chats.sqlite",
                     max_body_bytes=args.max_body_kb * 1024,
                     stream_interval_s=args.stream_interval_ms / 1000)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level,
                limit_max_requests=args.max_requests)


if __name__ == "__main__":
    main()
