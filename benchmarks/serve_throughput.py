"""Serving throughput and latency of `python -m gpt_jax.serve`, measured through HTTP with the
official `openai` client (streaming), the server in a subprocess on loopback.

1. Throughput: the same `--requests` chat requests (greedy, `--max-tokens` each, streamed) sent by
   1 client (serially: the peer), then by 16 and 64 concurrent clients (threads, plain httpx);
   the median of `--repeats` passes (all listed), TTFT from that pass. Prints completion tokens/s, the
   ratio to the serial run, and time to first token (TTFT: first content chunk) p50 / p99.
   Target: >= 4x the serial tokens/s at 64 clients.
2. Prefix cache: a chat whose second turn carries a >= 512-token history; TTFT of the second turn
   with the prefix cache on and off (two servers, `--conversations` chats each, medians).
   Target: <= 0.3x with the cache.

The second-turn chats use the official `openai` client. The model: the tiny recipe's shape
(4 x d128, vocab 2048) with random weights and a 1024-token context (so a 512-token history
fits), unless `--workdir` names a trained one. The clients run in this process (threads) on the
same cores as the server, as a local deployment would.
A warm-up pass at each concurrency first compiles the shapes it meets. Last line:
`serial_tok_s=... c16_tok_s=... c64_tok_s=... ratio64=... ttft_turn2_on_ms=... off_ms=... ratio=...`

    .venv/bin/python benchmarks/serve_throughput.py [--requests 256] [--max-tokens 64]
        [--stream-interval-ms 20]   (the server's flag; 0: every token written at once)
        [--no-overlap]              (the server's flag: each decode step read back before the next)
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import httpx2 as httpx  # noqa: E402
import openai  # noqa: E402

from gpt_jax.model import GPTConfig  # noqa: E402
from gpt_jax.serve.__main__ import freeze_heap  # noqa: E402
from gpt_jax.serve.launch import ServerProcess  # noqa: E402

SHAPE = GPTConfig(family="llama", vocab_size=2048, max_seq_len=1024, n_layers=4, d_model=128,
                  n_heads=4, init_std=0.02)
TEXT = "The quick brown fox jumps over the lazy dog while the cat sleeps in the warm sun. "


class Server(ServerProcess):
    def __init__(self, workdir: Path, *flags: str):
        super().__init__(workdir, "--stages=sft", "--tools=",
                         f"--compile-cache={workdir / 'xla_cache'}", *flags)
        self.client = openai.OpenAI(base_url=f"{self.url}/v1", api_key="none", max_retries=0,
                                    timeout=600)
        self.http = httpx.Client(base_url=self.url, timeout=600,
                                 limits=httpx.Limits(max_connections=256))

    def stream(self, messages, max_tokens: int) -> tuple[float, int]:
        """(TTFT seconds, completion tokens) of one streamed greedy chat request. Read with plain
        httpx and little parsing: the clients share the host's cores with the server, and the
        official client's per-chunk models would take a good part of them."""
        body = {"model": "sft", "messages": messages, "temperature": 0, "max_tokens": max_tokens,
                "stream": True, "stream_options": {"include_usage": True}}
        start, first, usage = time.perf_counter(), None, None
        with self.http.stream("POST", "/v1/chat/completions", json=body) as r:
            r.raise_for_status()
            for line in r.iter_lines():
                if not line.startswith("data: {"):
                    continue
                if first is None and ('"content":""' not in line or '"finish_reason":"' in line):
                    first = time.perf_counter() - start
                if '"usage"' in line and '"choices":[]' in line:
                    usage = json.loads(line[len("data: "):])["usage"]
        return first, usage["completion_tokens"]

def throughput(server: Server, n: int, clients: int, max_tokens: int) -> dict:
    questions = [[{"role": "user", "content": f"Request {i}: " + TEXT[: 20 + 3 * (i % 20)]}]
                 for i in range(n)]
    start, cpu = time.perf_counter(), time.process_time()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(lambda m: server.stream(m, max_tokens), questions))
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    ttft = sorted(r[0] for r in results)
    tokens = sum(r[1] for r in results)
    return {"clients": clients, "tokens": tokens, "seconds": wall, "tok_s": tokens / wall,
            "client_cpu_share": cpu / wall,
            "ttft_p50_ms": 1e3 * ttft[len(ttft) // 2],
            "ttft_p99_ms": 1e3 * ttft[min(len(ttft) - 1, int(0.99 * len(ttft)))]}


def second_turn_ttft(server: Server, conversations: int, tok, history_tokens: int,
                     follow_up: str) -> float:
    times = []
    for c in range(conversations):
        text = f"Conversation {c}. "
        while len(tok.encode(text)) < history_tokens:
            text += TEXT
        turn1 = [{"role": "user", "content": text}]
        reply = server.client.chat.completions.create(model="sft", messages=turn1, temperature=0,
                                                      max_tokens=16).choices[0].message.content
        turn2 = turn1 + [{"role": "assistant", "content": reply},
                         {"role": "user", "content": follow_up}]
        times.append(server.stream(turn2, max_tokens=1)[0])
    return 1e3 * statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--workdir", default=None, help="a workdir with a finished sft stage")
    p.add_argument("--requests", type=int, default=256)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--clients", default="1,16,64")
    p.add_argument("--history", type=int, default=520)
    p.add_argument("--repeats", type=int, default=3, help="measured passes per concurrency")
    p.add_argument("--conversations", type=int, default=9)
    p.add_argument("--stream-interval-ms", type=float, default=20.0,
                   help="the server's --stream-interval-ms for the throughput passes")
    p.add_argument("--overlap", default=True, action=argparse.BooleanOptionalAction,
                   help="the server's --overlap for the throughput passes (--no-overlap: each "
                        "decode step read back before the next is dispatched)")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args()
    from gpt_jax.tokenizer import Tokenizer

    tmp = tempfile.TemporaryDirectory()
    workdir = Path(args.workdir) if args.workdir else Path(tmp.name)
    if not args.workdir:
        from helpers import random_model_workdir

        random_model_workdir(workdir, SHAPE, std=0.02)
    tok = Tokenizer.load(workdir / "tokenizer" / "tokenizer.json")
    from gpt_jax.flops import cpu_name, measure_matmul_peak

    print(f"host: {cpu_name()}, {os.cpu_count()} cores, float32 matmul peak "
          f"{measure_matmul_peak() / 1e9:.0f} GFLOP/s (measured now)")
    clients = [int(c) for c in args.clients.split(",")]
    slots = str(max(clients))
    # the clients share this process with JAX's objects: without this, a full collection of the
    # cyclic GC (100-170 ms here) stops every client thread a few times a run
    freeze_heap()

    server = Server(workdir, f"--slots={slots}", f"--max-queue={4 * args.requests}",
                    "--prefix-cache-mb=0", f"--stream-interval-ms={args.stream_interval_ms:g}",
                    "--overlap" if args.overlap else "--no-overlap")
    try:
        for c in clients:  # warm-up: the same pass once, which compiles the shapes it meets
            throughput(server, args.requests, c, args.max_tokens)
        rows = []
        for c in clients:  # the median of `--repeats` passes (2 shared cores: single passes vary)
            passes = sorted((throughput(server, args.requests, c, args.max_tokens)
                             for _ in range(args.repeats)), key=lambda r: r["tok_s"])
            rows.append({**passes[len(passes) // 2],
                         "tok_s_all": [round(r["tok_s"], 1) for r in passes]})
    finally:
        server.close()
    serial = rows[0]["tok_s"]
    print(f"{'clients':>8} {'tokens':>7} {'seconds':>8} {'tok/s':>8} {'x serial':>9} "
          f"{'TTFT p50':>9} {'TTFT p99':>9} {'client CPU':>11}")
    for r in rows:
        print(f"{r['clients']:>8} {r['tokens']:>7} {r['seconds']:>8.2f} {r['tok_s']:>8.1f} "
              f"{r['tok_s'] / serial:>9.2f} {r['ttft_p50_ms']:>7.0f}ms {r['ttft_p99_ms']:>7.0f}ms "
              f"{r['client_cpu_share']:>10.0%}   passes: {r['tok_s_all']}")
    print("(client CPU: the clients' CPU time / wall time, in cores; they share the host's "
          f"{os.cpu_count()} cores with the server)")

    ttft = {}
    for label, mb in (("on", "256"), ("off", "0")):
        server = Server(workdir, "--slots=4", f"--prefix-cache-mb={mb}")
        try:
            # the same chats twice, the second measured with another follow-up question of the
            # same length: the first pass compiles each prompt's chunk shape (a full prefill of a
            # new length would otherwise time a compile), the second's follow-up is not cached
            second_turn_ttft(server, args.conversations, tok, args.history,
                             "And then what happened?")
            ttft[label] = second_turn_ttft(server, args.conversations, tok, args.history,
                                           "What did they do next?")
        finally:
            server.close()
    ratio = ttft["on"] / ttft["off"]
    print(f"second turn after a >= {args.history}-token history: TTFT {ttft['on']:.0f} ms with the "
          f"prefix cache, {ttft['off']:.0f} ms without: {ratio:.2f}x (target <= 0.3x)")
    by = {r["clients"]: r for r in rows}
    big = max(clients)
    summary = (f"serial_tok_s={serial:.1f} " + " ".join(
        f"c{c}_tok_s={by[c]['tok_s']:.1f}" for c in clients[1:])
        + f" ratio{big}={by[big]['tok_s'] / serial:.2f} ttft_turn2_on_ms={ttft['on']:.0f} "
        f"off_ms={ttft['off']:.0f} ratio={ratio:.2f}")
    if args.out:
        Path(args.out).write_text(json.dumps({"throughput": rows, "ttft_turn2_ms": ttft}, indent=2))
    print(summary)


if __name__ == "__main__":
    main()
