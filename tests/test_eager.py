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
        wait = loop.create_future()
        task = eager.start(answer(log, wait), loop)
        assert task is not None
        task.cancel()  # the client went away in the same turn of the loop
        await asyncio.gather(task, return_exceptions=True)
        assert task.cancelled() and wait.cancelled() and log == ["started", "cleaned up"]

    asyncio.run(main())


def test_the_first_step_may_wait_with_a_timeout():
    async def main() -> None:
        loop = asyncio.get_running_loop()
        log: list[str] = []

        async def waits_in_time() -> None:
            try:
                await asyncio.wait_for(loop.create_future(), 0.01)
            except asyncio.TimeoutError:
                log.append("timed out")

        started: asyncio.Future[asyncio.Task[None] | None] = loop.create_future()
        # From a plain callback, outside any task, as the server starts an answer when its request arrives.
        loop.call_soon(lambda: started.set_result(eager.start(waits_in_time(), loop)))
        task = await asyncio.wait_for(started, 5)
        assert task is not None
        await asyncio.wait_for(task, 5)
        assert log == ["timed out"]

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
