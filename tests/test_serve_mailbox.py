"""The engine-to-loop mailbox (gpt_jax/serve/mailbox.py): every event arrives, in order, on its own
queue, and events posted while the loop is busy arrive in one wake-up; `take_batch` with a hold
gathers what arrives meanwhile (a stream's coalesced chunks)."""
import asyncio
import threading
import time

from gpt_jax.serve.mailbox import Mailbox, take_batch


def test_posts_arrive_in_order_on_their_queues():
    async def main():
        box = Mailbox(asyncio.get_running_loop())
        queues = [asyncio.Queue() for _ in range(3)]

        def producer():
            for i in range(600):
                box.post(queues[i % 3], i)

        thread = threading.Thread(target=producer)
        thread.start()
        got = [[await q.get() for _ in range(200)] for q in queues]
        thread.join()
        return box, got, queues

    box, got, queues = asyncio.run(main())
    assert got == [list(range(k, 600, 3)) for k in range(3)]
    assert all(q.empty() for q in queues)
    assert 1 <= box.wakeups <= 600


def test_posts_while_the_loop_is_busy_take_one_wakeup():
    async def main():
        box = Mailbox(asyncio.get_running_loop())
        queue = asyncio.Queue()
        thread = threading.Thread(target=lambda: [box.post(queue, i) for i in range(64)])
        thread.start()
        thread.join()
        time.sleep(0.01)  # the loop is blocked here: nothing is drained yet
        assert queue.empty() and box.wakeups == 1
        items = [await queue.get() for _ in range(64)]
        box.post(queue, "after")  # an empty mailbox schedules a new drain
        return box, items, await queue.get()

    box, items, last = asyncio.run(main())
    assert items == list(range(64)) and last == "after" and box.wakeups == 2


def test_take_batch_holds_for_what_arrives_meanwhile():
    """An item every ~1 ms for ~0.2 s: without a hold, batches are what was queued (about one
    each); with a 20 ms hold, each batch after the first gathers several."""
    async def consume(hold_s):
        box = Mailbox(asyncio.get_running_loop())
        queue = asyncio.Queue()

        def producer():
            for i in range(200):
                box.post(queue, i)
                time.sleep(0.001)

        thread = threading.Thread(target=producer)
        thread.start()
        batches = []
        while sum(map(len, batches)) < 200:
            batches.append(await take_batch(queue, hold_s))
        thread.join()
        return batches

    held = asyncio.run(consume(0.02))
    assert [i for b in held for i in b] == list(range(200))
    assert len(held) <= 50  # ~10 batches of ~20 (4 or more each, even on a slow host)
    plain = asyncio.run(consume(0.0))
    assert [i for b in plain for i in b] == list(range(200)) and len(plain) > 2 * len(held)
