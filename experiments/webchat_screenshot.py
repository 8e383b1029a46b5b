"""The README's picture of the web chat: a real server on a trained workdir, a real Chromium, two
conversations (one with a calculator call and a regenerated reply), then a screenshot.

  python experiments/webchat_screenshot.py --workdir runs/tiny --out docs/figures/webchat.png

The conversations go to a temporary SQLite file, not the workdir's chats.sqlite; greedy except
the regenerated reply (temperature 1), so the picture is what the workdir's `sft` model answers.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from gpt_jax.serve.launch import ServerProcess

TURNS = ["Hi! Who are you?", None,
         "Mia has 47 marbles. She buys 38 more. How many marbles does Mia have now? Use the "
         "calculator for every step.", "regenerate", "Thanks! What is **12 * 34**?"]


def main() -> None:
    from playwright.sync_api import sync_playwright

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", required=True)
    p.add_argument("--out", default="docs/figures/webchat.png")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp())
    with ServerProcess(args.workdir, f"--chat-db={tmp / 'chats.sqlite'}", "--slots=4",
                       log=tmp / "server.log") as server, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=shutil.which("chromium"),
                                     args=["--no-sandbox"])
        page = browser.new_context(viewport={"width": 1200, "height": 700},
                                   bypass_csp=True).new_page()  # CSP forbids wait_for_function
        page.set_default_timeout(120_000)
        page.goto(server.url + "/")
        page.wait_for_selector("body[data-ready='1']")

        def temperature(t: str) -> None:
            page.fill("[data-testid=temperature]", t)
            page.dispatch_event("[data-testid=temperature]", "change")

        def finished() -> None:
            page.wait_for_selector("[data-testid=send]:visible")
            page.wait_for_selector(".message.streaming", state="detached")

        temperature("0")
        for turn in TURNS:
            if turn is None:
                page.click("[data-testid=new-chat]")
            elif turn == "regenerate":
                temperature("1")
                page.click("[data-testid=regenerate]")
                finished()
            else:
                page.fill("[data-testid=composer]", turn)
                page.click("[data-testid=send]")
                finished()
        page.wait_for_function("[...document.querySelectorAll('[data-testid=chat-title]')]"
                               ".every(t => t.textContent !== 'New chat')")
        page.screenshot(path=args.out)
        browser.close()
    print(args.out)


if __name__ == "__main__":
    main()
