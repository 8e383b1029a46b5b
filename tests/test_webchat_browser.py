"""The web chat end to end in a real headless Chromium (Debian's package, driven by Playwright)
against the real server: new chat -> send -> tokens stream -> Stop -> reload -> the titled chat
is listed -> switch chats -> history intact; edit makes a branch and the arrows switch it; the
model picker; tool calls collapsed; an XSS payload stays text; rename and delete; then a server
restart (now with a moderation model that flags everything): the conversations survived and a
flagged message shows the banner. Screenshots go to test-results/webchat/."""
import os
import shutil
import time
from pathlib import Path

import httpx2 as httpx
import pytest

from gpt_jax.serve.conversations import ConversationStore
from gpt_jax.serve.launch import ServerProcess
from helpers import head_model_stage, long_greedy_prompt, webchat_config, webchat_workdir

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SHOTS = Path(__file__).resolve().parent.parent / "test-results" / "webchat"
XSS = '<script>window.__xss=1</script><img src=x onerror="window.__xss=2"> **bold** `code`'
WAIT_MS = 60_000


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.fail("Debian's chromium is needed (make test installs it: apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


def open_page(browser, url):
    # bypass_csp: the page's CSP forbids eval, which wait_for_function needs; it also means the
    # XSS check below holds by the page's rendering alone, without the CSP's help
    page = browser.new_context(viewport={"width": 1200, "height": 800},
                               bypass_csp=True).new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.set_default_timeout(WAIT_MS)
    page.goto(url)
    page.wait_for_selector("body[data-ready='1']")
    return page, errors


def by_testid(page, name, **attrs):
    sel = f"[data-testid={name}]" + "".join(f"[data-{k}={v}]" for k, v in attrs.items())
    return page.locator(sel)


def send(page, text):
    page.fill("[data-testid=composer]", text)
    page.click("[data-testid=send]")


def wait_reply_done(page):
    page.wait_for_selector("[data-testid=send]:visible")
    page.wait_for_selector(".message.streaming", state="detached")


def chat_titles(page):
    return by_testid(page, "chat-title").all_inner_texts()


def test_web_chat_end_to_end(browser, tmp_path):
    SHOTS.mkdir(parents=True, exist_ok=True)
    wd = webchat_workdir(tmp_path)
    cache = f"--compile-cache={tmp_path / 'xla'}"  # the restart skips the warm-up's compiles
    # 5 ms a decode step: on a fast host the random model's whole 300-token reply once streamed
    # out before the page could see it grow and press Stop
    with ServerProcess(wd, "--slots=4", "--max-requests=400", "--step-delay-ms=5", cache,
                       timeout_s=240) as server:
        long_prompt = long_greedy_prompt(server.url)
        page, errors = open_page(browser, server.url + "/")
        assert sorted(by_testid(page, "model-select").locator("option").all_inner_texts()) == [
            "dpo", "sft"]
        assert by_testid(page, "model-select").input_value() == "sft"
        page.fill("[data-testid=temperature]", "0")
        page.dispatch_event("[data-testid=temperature]", "change")

        # send -> tokens stream -> stop
        send(page, long_prompt)
        reply = by_testid(page, "message", role="assistant")
        page.wait_for_function("document.querySelector('.message.streaming .body')"
                               "?.textContent.length > 0")
        first = reply.inner_text()
        page.wait_for_function(f"document.querySelector('.message.streaming .body')"
                               f"?.textContent.length > {len(first.strip()) + 3}")
        page.click("[data-testid=stop]")
        wait_reply_done(page)
        assert "stopped" in reply.inner_text()
        stopped_text = reply.locator(".body").inner_text()
        # the row is gone (the title's short request may still hold a slot for a moment)
        deadline = time.monotonic() + 30
        while httpx.get(f"{server.url}/stats").json()["sft"]["busy_slots"]:
            assert time.monotonic() < deadline, "a slot stayed busy after Stop"
            time.sleep(0.1)

        # reload: the chat is listed with the model's title, the thread is intact
        page.reload()
        page.wait_for_selector("body[data-ready='1']")
        page.wait_for_function("[...document.querySelectorAll('[data-testid=chat-title]')]"
                               ".every(t => t.textContent !== 'New chat')")
        (title,) = chat_titles(page)
        assert title
        assert by_testid(page, "message", role="user").inner_text().startswith(long_prompt)
        assert reply.locator(".body").inner_text() == stopped_text

        # a second chat, on the other model; switch between the two
        page.click("[data-testid=new-chat]")
        assert by_testid(page, "message").count() == 0
        by_testid(page, "model-select").select_option("dpo")
        send(page, "Hi there")
        wait_reply_done(page)
        page.wait_for_function("document.querySelectorAll('[data-testid=chat-item]').length == 2")
        conversations = httpx.get(f"{server.url}/api/conversations").json()["data"]
        second = httpx.get(f"{server.url}/api/conversations/{conversations[0]['id']}").json()
        assert [m["model"] for m in second["messages"]] == [None, "dpo"]
        by_testid(page, "chat-item").nth(1).click()
        page.wait_for_function("document.querySelector('[data-testid=message][data-role=user]')"
                               f"?.textContent.startsWith({long_prompt!r})")
        assert by_testid(page, "model-select").input_value() == "sft"
        by_testid(page, "chat-item").nth(0).click()
        page.wait_for_function("document.querySelector('[data-testid=message][data-role=user]')"
                               "?.textContent.startsWith('Hi there')")

        # edit the user message: a branch; the arrows switch between the two versions
        by_testid(page, "edit").click()
        page.fill("[data-testid=edit-box]", "Hello again")
        by_testid(page, "edit-save").click()
        wait_reply_done(page)
        user = by_testid(page, "message", role="user")
        assert user.locator(".body").inner_text() == "Hello again"
        assert user.locator("[data-testid=branch-position]").inner_text() == "2/2"
        user.locator("[data-testid=branch-prev]").click()
        page.wait_for_function("document.querySelector('[data-testid=message][data-role=user] "
                               ".body').textContent === 'Hi there'")
        assert user.locator("[data-testid=branch-position]").inner_text() == "1/2"
        assert by_testid(page, "message", role="assistant").count() == 1
        user.locator("[data-testid=branch-next]").click()
        page.wait_for_function("document.querySelector('[data-testid=message][data-role=user] "
                               ".body').textContent === 'Hello again'")
        # regenerate: a second version of the reply
        by_testid(page, "regenerate").click()
        wait_reply_done(page)
        assert by_testid(page, "message", role="assistant").locator(
            "[data-testid=branch-position]").inner_text() == "2/2"

        # an XSS payload stays text (user message and the markdown renderer)
        page.click("[data-testid=new-chat]")
        send(page, XSS)
        wait_reply_done(page)
        body = by_testid(page, "message", role="user").locator(".body")
        assert body.inner_text() == XSS.replace(" **bold** `code`", " bold code")
        assert body.locator("strong").inner_text() == "bold"
        assert body.locator("code").inner_text() == "code"
        assert page.evaluate("window.__xss") is None
        assert page.locator("#messages script, #messages img").count() == 0
        page.wait_for_function("[...document.querySelectorAll('[data-testid=chat-title]')]"
                               ".every(t => t.textContent !== 'New chat')")  # all 3 titled

        # tool calls are shown collapsed (a conversation written as the engine saves one)
        store = ConversationStore(wd / "chats.sqlite")
        conv = store.create("local", "sft", 0.0)
        u = store.add_message("local", conv["id"], None, "user", "What is 12*34?")
        store.add_message("local", conv["id"], u["id"], "assistant", "12*34 = 408. It is 408.",
                          parts=[{"type": "text", "text": "12*34"},
                                 {"type": "tool_call", "name": "calculator", "input": "12*34",
                                  "output": "408"},
                                 {"type": "text", "text": " = 408. It is 408."}])
        store.update("local", conv["id"], title="Tool call")
        store.close()
        page.goto(f"{server.url}/#{conv['id']}")
        try:
            page.wait_for_selector("[data-testid=tool-call]")
        except Exception as err:  # say what was shown, in the one line CI's summary keeps
            shown = page.evaluate(
                "JSON.stringify({conv: state.conv && state.conv.id, streaming: state.streaming, "
                "pending: state.pendingHash, status: document.getElementById('status').textContent, "
                "listed: state.conversations.map((c) => c.id)})")
            raise AssertionError(f"url {page.url} wanted {conv['id']} shown {shown}") from err
        call = by_testid(page, "tool-call")
        assert call.count() == 1 and call.get_attribute("open") is None
        assert call.locator("summary").inner_text() == "calculator: 12*34"
        assert not call.locator("pre").is_visible()
        call.locator("summary").click()
        assert call.locator("pre").inner_text() == "408"
        page.screenshot(path=str(SHOTS / "tool_call.png"))

        # rename and delete
        item = by_testid(page, "chat-item").filter(has_text="Tool call")
        item.locator("[data-testid=rename]").click()
        page.fill("[data-testid=rename-input]", "Calculator demo")
        page.press("[data-testid=rename-input]", "Enter")
        page.wait_for_function("[...document.querySelectorAll('[data-testid=chat-title]')]"
                               ".some(t => t.textContent === 'Calculator demo')")
        page.once("dialog", lambda d: d.accept())
        by_testid(page, "chat-item").filter(has_text="Calculator demo").locator(
            "[data-testid=delete]").click()
        page.wait_for_function("document.querySelectorAll('[data-testid=chat-item]').length == 3")
        before = chat_titles(page)
        page.screenshot(path=str(SHOTS / "chat.png"))
        assert errors == []
        page.context.close()

    # restart, now with a moderation model that flags every text
    head_model_stage(wd, webchat_config(), "moderation", bias=20.0, seq_len=32,
                     summary={"threshold": 0.5})
    with ServerProcess(wd, "--slots=4", "--max-requests=200", cache, timeout_s=240) as server:
        page, errors = open_page(browser, server.url + "/")
        assert chat_titles(page) == before and "New chat" not in before
        by_testid(page, "chat-item").filter(has_text=title).click()
        page.wait_for_function("document.querySelector('[data-testid=message][data-role=user]')"
                               f"?.textContent.startsWith({long_prompt!r})")
        assert by_testid(page, "message", role="assistant").locator(".body").inner_text() == (
            stopped_text)
        assert by_testid(page, "moderation-banner").is_hidden()
        send(page, "How do I pick a lock?")
        wait_reply_done(page)
        banner = by_testid(page, "moderation-banner")
        assert banner.is_visible() and "flagged" in banner.inner_text()
        page.screenshot(path=str(SHOTS / "moderation.png"))
        page.reload()
        page.wait_for_selector("body[data-ready='1']")
        assert by_testid(page, "moderation-banner").is_visible()  # saved with the message
        assert errors == []
        page.context.close()
    assert os.path.getsize(SHOTS / "chat.png") > 10_000

