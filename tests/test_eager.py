"""Answers that run at once up to their first wait (hraftd.eager): the same outcome as a task, cleanup included."""

from __future__ import annotations

import asyncio

from hraftd import eager


async def answer(log: list[str], wait: asyncio.Future[str] | None) -> None:
    log.append("started")
    try:
        if wait is not None:
            log.append(await wait)
        log.append("answered")
    finally:
        log.append("cleaned up")


def test_an_answer_that_never_waits_runs_whole_without_a_task():
    async def main() -> None:
        log: list[str] = []
        assert eager.start(answer(log, None), asyncio.get_running_loop()) is None
        assert log == ["started", "answered", "cleaned up"]

    asyncio.run(main())


def test_an_answer_that_waits_runs_up_to_its_wait_then_its_task_finishes_it():
    async def main() -> None:
        loop = asyncio.get_running_loop()
        log: list[str] = []
        wait = loop.create_future()
        task = eager.start(answer(log, wait), loop)
        assert task is not None and log == ["started"]
        wait.set_result("woken")
        await task
        assert log == ["started", "woken", "answered", "cleaned up"]

    asyncio.run(main())


def test_a_task_cancelled_before_its_first_step_still_runs_the_answers_cleanup():
    async def main() -> None:
        loop = asyncio.get_running_loop()
        log: list[str] = []
        task = eager.start(answer(log, loop.create_future()), loop)
        assert task is not None
        task.cancel()  # the client went away in the same turn of the loop
        await asyncio.gather(task, return_exceptions=True)
        assert task.cancelled() and log == ["started", "cleaned up"]

    asyncio.run(main())


def test_a_task_cancelled_while_it_waits_runs_the_answers_cleanup():
    async def main() -> None:
        loop = asyncio.get_running_loop()
        log: list[str] = []
        wait = loop.create_future()
        task = eager.start(answer(log, wait), loop)
        await asyncio.sleep(0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert task.cancelled() and wait.cancelled() and log == ["started", "cleaned up"]

    asyncio.run(main())
