"""The chain runner: answers without waiting come back at once; waiting queries resume
from a Waiter, an asyncio future or a bare yield; errors reach the caller."""

from __future__ import annotations

import asyncio

import pytest

from atr_proxy.dns.chain import Link, Reply, Request, Waiter, chain, start
from atr_proxy.dns.wire import parse_query

QUERY = parse_query(b"\x00\x07\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
                    b"\x01a\x04test\x00\x00\x01\x00\x01")


def request() -> Request:
    return Request(QUERY, "127.0.0.1", "udp")


class Answer(Link):
    def __init__(self, wait=None) -> None:  # type: ignore[no-untyped-def]
        super().__init__(None)
        self.wait = wait

    async def resolve(self, req: Request) -> Reply:
        value = b"now"
        if self.wait is not None:
            value = await self.wait()
        return Reply(value, 0, "test")


class Tag(Link):
    async def resolve(self, req: Request) -> Reply:
        reply = await self.next.resolve(req)
        reply.detail += "+tag"
        return reply


async def test_a_chain_that_does_not_wait_answers_at_once():
    head = chain(Tag(), Tag(), Answer())
    reply = start(head, request(), lambda r, e: pytest.fail("no callback expected"))
    assert reply.wire == b"now" and reply.detail == "+tag+tag"


async def test_a_waiter_resumes_the_query_when_its_value_arrives():
    waiter = Waiter()
    head = chain(Tag(), Answer(lambda: waiter))
    got = []
    assert start(head, request(), lambda r, e: got.append((r, e))) is None
    assert got == []
    waiter.set_result(b"later")  # resumes synchronously, no trip through the loop
    (reply, error), = got
    assert error is None and reply.wire == b"later" and reply.detail == "+tag"


async def test_a_failed_waiter_raises_in_the_link_and_reaches_done():
    waiter = Waiter()
    got = []
    start(chain(Answer(lambda: waiter)), request(), lambda r, e: got.append((r, e)))
    waiter.set_exception(TimeoutError("slow"))
    (reply, error), = got
    assert reply is None and isinstance(error, TimeoutError)


async def test_asyncio_futures_and_bare_yields_are_waited_for_like_a_task():
    loop = asyncio.get_running_loop()
    future = loop.create_future()

    async def mixed() -> bytes:
        await asyncio.sleep(0)
        value = await future
        await asyncio.sleep(0.01)
        return value

    done = loop.create_future()
    start(chain(Tag(), Answer(mixed)), request(), lambda r, e: done.set_result((r, e)))
    loop.call_later(0.01, future.set_result, b"from a future")
    reply, error = await asyncio.wait_for(done, 2)
    assert error is None and reply.wire == b"from a future"


async def test_a_waiter_awaited_in_a_plain_task_behaves_like_a_future():
    waiter = Waiter()
    task = asyncio.ensure_future(Answer(lambda: waiter).resolve(request()))
    await asyncio.sleep(0)
    waiter.set_result(b"in a task")
    reply = await asyncio.wait_for(task, 2)
    assert reply.wire == b"in a task"


async def test_errors_before_the_first_wait_are_raised_to_the_caller():
    class Broken(Link):
        async def resolve(self, req: Request) -> Reply:
            raise ValueError("bug")

    with pytest.raises(ValueError):
        start(chain(Tag(), Broken()), request(), lambda r, e: None)


def test_the_event_fold_forgets_hits_once_their_window_has_passed():
    """A flood of new blocked names (one event each) must not keep MAX_FOLDED entries in
    memory: only the last ``window`` seconds of hits are remembered (the soak's RSS)."""
    from types import SimpleNamespace

    from atr_proxy.dns.querylog import MAX_FOLDED, EventFold

    now = [0.0]
    fold = EventFold(10.0, clock=lambda: now[0])
    verdict = SimpleNamespace(blocked=True, action="block",
                              hits=[SimpleNamespace(indicator_id=7)])

    def note(name: str) -> str | None:
        from dnslib import DNSRecord

        req = Request(parse_query(DNSRecord.question(f"{name}.test").pack()), "127.0.0.1",
                      "udp")
        return fold.note(req, verdict)

    first = note("evil001")
    now[0] = 5.0
    assert note("evil001") == first  # folded within the window
    for i in range(1000):  # 100 new names a second for 10 s
        now[0] = 5.0 + i / 100
        note(f"n{i:06d}")
    assert len(fold._seen) <= 1001
    now[0] = 100.0
    note("evil001")
    assert len(fold._seen) == 1 and len(fold._order) == 1  # all older hits forgotten
    assert note("evil001") != first  # and a new event for the hit after its window
    for i in range(MAX_FOLDED + 10):  # never more than MAX_FOLDED, whatever the window
        note(f"m{i:06d}")
    assert len(fold._seen) <= MAX_FOLDED
