"""The asyncio loop's way to the store: SQLite calls leave the loop, one at a time, in the order made."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


class StoreThread:
    """Runs store calls on one dedicated thread, so the loop never waits on SQLite (a busy database, a
    slow disk) and the handlers' writes happen in the order the handlers made them."""

    def __init__(self) -> None:
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="landiff-store")

    async def run(self, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, functools.partial(call, *args, **kwargs))

    def close(self) -> None:
        self.executor.shutdown(wait=True)
