"""Chat with a trained stage: `python -m gpt_jax.chat --workdir=runs/x --stage=sft`.

Two modes, picked from the stage (override with --mode):
- chat (sft, ppo, ... any stage after pretraining): multi-turn history rendered with the chat
  template (`Tokenizer.render_for_completion`); the reply ends at <|assistant_end|> (or eos);
- completion (`--stage=pretrain`): few-shot prompting of the base model: each input is a whole
  prompt (write "\\n" for a line break), continued as raw text until eos or a `--stop` string.

Replies stream to stdout as they decode (`streaming.stream`). With `--calculator` (chat mode) the
reply may call the calculator in-line (<|tool_call_start|> expr <|tool_call_end|>, see
`gpt_jax.engine_tools`): the engine inserts the result, the reply shows "expr = result", a notice
"[calc] expr -> result" goes to stderr, and the history keeps the call and result as parts.
`--python` adds sandboxed Python (`gpt_jax.tools.sandbox`): a call whose text starts `python:`
runs as a program and its output is the result (`gpt_jax.tools.toolbox` routes the calls).
With `--memory` (chat mode) each message is sent with what the retrieval memory finds for it
(`gpt_jax.memory`: BM25 over `--documents` files and facts stored with `/remember <text>`, in
<workdir>/chats.sqlite), rendered between the retrieval tokens; a notice says how many hits.
Commands: /reset, /system <text>, /temp <x> (0 = greedy), /remember <text>, /forget, /help, /quit.
When the history no
longer fits the model context with room for the reply, the oldest turns are dropped and a notice
says so (notices go to stderr).
With stdin not a terminal it reads one message per line and prints one reply per line, exiting 0
at EOF, so it works in a pipe: `printf 'Hi\\nWhat is 2+2?\\n' | python -m gpt_jax.chat ...`.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
from pathlib import Path
from typing import Callable, TextIO

import jax.numpy as jnp

from gpt_jax import sampling, streaming
from gpt_jax.sampling import SamplingConfig

HELP = ("/reset  /system <text>  /temp <x>  /remember <text>  /forget  /help  /quit   "
        "(\\n in a message = line break)")


def _mask_from(logits, state, first_unused: int):
    """Logit processor: never sample ids the tokenizer does not know (model vocab may be padded)."""
    del state
    return jnp.where(jnp.arange(logits.shape[-1]) < first_unused, logits, -jnp.inf)


class ChatSession:
    """Conversation state + generation. `respond(text)` returns the reply (streamed via on_text)."""

    def __init__(self, tokenizer, config, params, sampling_config: SamplingConfig,
                 mode: str = "chat", system: str | None = None,
                 notice: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr),
                 tool: Callable[[str], str] | None = None, memory=None):
        if mode not in ("chat", "completion"):
            raise ValueError(f"mode={mode!r}; expected 'chat' or 'completion'")
        if tool is not None and mode != "chat":
            raise ValueError("a tool (--calculator) needs chat mode")
        if memory is not None and mode != "chat":
            raise ValueError("retrieval memory (--memory) needs chat mode")
        if memory is not None and "retrieval_start" not in tokenizer.special_ids:
            raise ValueError("retrieval memory (--memory) needs a tokenizer with the retrieval "
                             "tokens: this workdir's tokenizer stage ran before they existed")
        self.tool, self.memory, self.context = tool, memory, []
        self.tok, self.mode, self.system, self.notice = tokenizer, mode, system, notice
        self.config, self.params = sampling.unstack_layers(config, params)
        stops = ([tokenizer.token_id("assistant_end"), tokenizer.eos_id] if mode == "chat"
                 else [tokenizer.eos_id])
        self.sampling = dataclasses.replace(sampling_config, stop_ids=tuple(stops))
        self.processor = None
        if config.vocab_size > tokenizer.vocab_size:
            self.processor = functools.partial(_mask_from, first_unused=tokenizer.vocab_size)
        self.history: list[dict] = []
        self.replies = 0

    # -- prompts --------------------------------------------------------------------------------
    def prompt_ids(self, text: str, history: list[dict] | None = None) -> list[int]:
        if self.mode == "completion":  # pretraining documents are eos-separated
            return [self.tok.eos_id, *self.tok.encode(text)]
        history = self.history if history is None else history
        system = [{"role": "system", "content": self.system}] if self.system else []
        return self.tok.render_for_completion(system + history + [self._user(text)])

    def _user(self, text: str) -> dict:
        return ({"role": "user", "content": text, "context": self.context} if self.context
                else {"role": "user", "content": text})

    def _fit(self, text: str) -> tuple[list[int], int] | None:
        """Prompt ids and max_new_tokens that fit the context, dropping the oldest turns."""
        limit, want = self.config.max_seq_len, self.sampling.max_new_tokens
        alone = len(self.prompt_ids(text, history=[]))
        if alone >= limit:  # unsendable even without history: keep the history
            self.notice(f"[message too long: {alone} tokens, context is {limit}; not sent]")
            return None
        dropped = 0
        ids = self.prompt_ids(text)
        while len(ids) + want > limit and self.history:
            self.history = self.history[2:]  # one user + assistant turn
            dropped += 1
            ids = self.prompt_ids(text)
        if dropped:
            self.notice(f"[context full: dropped the {dropped} oldest turn(s) of the conversation]")
        if len(ids) + want <= limit:
            return ids, want
        self.notice(f"[context full: reply limited to {limit - len(ids)} tokens]")
        return ids, limit - len(ids)

    # -- turns ----------------------------------------------------------------------------------
    def respond(self, text: str, on_text: Callable[[str], None] | None = None) -> str | None:
        self.context = self.memory.hits(text) if self.memory is not None else []
        if self.memory is not None:
            self.notice(f"[memory: {len(self.context)} hit(s)]")
        fitted = self._fit(text)
        if fitted is None:
            self.context = []
            return None
        ids, max_new = fitted
        cfg = dataclasses.replace(self.sampling, max_new_tokens=max_new,
                                  seed=self.sampling.seed + self.replies)
        tool_kw = {}
        if self.tool is not None:
            tool_kw = {"tool": self.tool,
                       "on_tool": lambda expr, result: self.notice(
                           f"[{getattr(self.tool, 'label', 'calc')}] {expr} -> {result}")}
        gen, reply = streaming.stream(self.params, self.config, ids, cfg, tokenizer=self.tok,
                                     on_text=on_text, logit_processor=self.processor,
                                     pad_id=self.tok.pad_id, **tool_kw)
        self.replies += 1
        if self.mode == "chat":
            content = reply if self.tool is None else self._content(gen.row(0), reply)
            self.history += [self._user(text), {"role": "assistant", "content": content}]
        self.context = []  # the hits belong to this turn (they stay in its history entry)
        return reply

    def _content(self, ids: list[int], reply: str):
        """The reply as history content: text/tool parts as the model saw them (plain text when the
        ids do not parse as a well-formed turn, e.g. a call cut off by the length limit)."""
        from gpt_jax.data.chat_template import parse_assistant

        stops = set(self.sampling.stop_ids)
        while ids and ids[-1] in stops:
            ids = ids[:-1]
        try:
            content, dangling, _ = parse_assistant(self.tok, ids)
        except ValueError:
            return reply
        return reply if dangling is not None else content

    def command(self, line: str) -> bool:
        """Handles a /command; False means quit."""
        name, _, arg = line.strip().partition(" ")
        if name == "/quit":
            return False
        if name == "/reset":
            self.history = []
            self.notice("[conversation reset]")
        elif name == "/system":
            if self.mode != "chat":
                self.notice("[/system only applies to chat mode]")
            else:
                self.system = arg.strip() or None
                self.notice(f"[system message {'set' if self.system else 'cleared'}]")
        elif name == "/temp":
            try:
                temperature = float(arg)
            except ValueError:
                self.notice("[usage: /temp <x>, e.g. /temp 0.7 (0 = greedy)]")
                return True
            self.sampling = dataclasses.replace(self.sampling, temperature=max(0.0, temperature))
            self.notice(f"[temperature {self.sampling.temperature:g}]")
        elif name in ("/remember", "/forget"):
            if self.memory is None:
                self.notice("[no memory: start with --memory]")
            elif name == "/forget":
                self.memory.forget()
                self.notice("[this conversation's memories are forgotten]")
            elif not arg.strip():
                self.notice("[usage: /remember <a fact to find again later>]")
            else:
                self.memory.remember(arg.strip())
                self.notice("[remembered]")
        elif name == "/help":
            self.notice(HELP)
        else:
            self.notice(f"[unknown command {name}; {HELP}]")
        return True


def load_session(workdir: str, stage: str, sampling_config: SamplingConfig, mode: str = "auto",
                 system: str | None = None, step: int | None = None, **kwargs) -> ChatSession:
    from gpt_jax.checkpoint import load_stage
    from gpt_jax.tokenizer import Tokenizer

    tok_path = Path(workdir) / "tokenizer" / "tokenizer.json"
    if not tok_path.exists():
        raise FileNotFoundError(f"{tok_path} not found: has the tokenizer stage run in {workdir}?")
    tokenizer = Tokenizer.load(tok_path)
    config, params = load_stage(workdir, stage, step)
    if mode == "auto":
        mode = "completion" if stage == "pretrain" else "chat"
    return ChatSession(tokenizer, config, params, sampling_config, mode, system, **kwargs)


def run(session: ChatSession, stdin: TextIO, stdout: TextIO, interactive: bool) -> int:
    def write(piece: str) -> None:
        stdout.write(piece)
        stdout.flush()

    if interactive:
        session.notice(f"[{session.mode} mode; {HELP}]")
    while True:
        if interactive:
            write("you> ")
        line = stdin.readline()
        if not line:
            break
        line = line.rstrip("\n")
        if line.startswith("/"):
            if not session.command(line):
                break
            continue
        if not line.strip():
            continue
        if interactive:
            write("bot> ")
        reply = session.respond(line.replace("\\n", "\n"), on_text=write)
        if reply is not None:
            write("\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--stage", default="sft", help="sft, ppo, ... or pretrain (completion)")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default latest)")
    parser.add_argument("--mode", default="auto", choices=["auto", "chat", "completion"])
    parser.add_argument("--max_new_tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--top_k", type=int, default=50)
    parser.add_argument("--top_p", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--system", default=None, help="system message (chat mode)")
    parser.add_argument("--calculator", action="store_true",
                        help="let replies call the calculator in-line (chat mode)")
    parser.add_argument("--python", action="store_true",
                        help="let replies run Python in the sandbox (gpt_jax/tools/sandbox.py): "
                             "a call starting 'python:'; with --calculator, other calls compute")
    parser.add_argument("--memory", action="store_true",
                        help="send each message with what the retrieval memory finds for it")
    parser.add_argument("--documents", default=None,
                        help="a file or folder of text to index into the memory (implies --memory)")
    parser.add_argument("--memory-k", type=int, default=3, help="hits per message")
    parser.add_argument("--stop", action="append", default=[],
                        help="stop string (repeatable), e.g. --stop='\\n\\n' for few-shot prompts")
    args = parser.parse_args(argv)
    stops = tuple(s.replace("\\n", "\n") for s in args.stop)
    cfg = SamplingConfig(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                         max_new_tokens=args.max_new_tokens, seed=args.seed, stop_strings=stops)
    tool = None
    names = [n for n, on in (("calculator", args.calculator), ("python", args.python)) if on]
    if names:
        from gpt_jax.tools import toolbox

        tool = toolbox(names)
    memory = None
    if args.memory or args.documents:
        from gpt_jax.memory.recall import Recall
        from gpt_jax.memory.store import MemoryStore

        store = MemoryStore(Path(args.workdir) / "chats.sqlite")
        if args.documents:
            added = store.add_path("local", args.documents)
            print(f"[memory: {sum(added.values())} chunks from {len(added)} file(s)]",
                  file=sys.stderr)
        memory = Recall(store, k=args.memory_k)
    try:
        session = load_session(args.workdir, args.stage, cfg, args.mode, args.system, args.step,
                               tool=tool, memory=memory)
    except ValueError as e:  # a flag that does not fit this stage or workdir
        parser.error(str(e))
    return run(session, sys.stdin, sys.stdout, interactive=sys.stdin.isatty())


if __name__ == "__main__":
    sys.exit(main())
