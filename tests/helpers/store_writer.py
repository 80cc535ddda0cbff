"""Crash-test writer: open a Store and write an increasing counter until killed.

Usage: ``python store_writer.py DB_PATH [PADDING_BYTES]``. The padding (a setting written once)
makes every write of the whole document that much larger, so that a kill is more likely to land
inside a write. Prints ``start N`` (the counter found on disk), then
``acked N`` after each write is acknowledged (durable), flushing stdout each time.
tests/test_store.py kills it with SIGKILL at random points and checks what is on disk.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from picofleet.common.store import Store


async def main(path: Path, padding: int) -> None:
    """Write counter = n for n = stored + 1, stored + 2, ... forever."""
    store = Store(path)
    await store.open()
    if padding and len(await store.get_value("padding", "")) != padding:
        await store.set_value("padding", "p" * padding)
    n = await store.get_value("counter", 0)
    sys.stdout.write(f"start {n}\n")
    sys.stdout.flush()
    while True:
        n += 1
        await store.set_value("counter", n)
        sys.stdout.write(f"acked {n}\n")
        sys.stdout.flush()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 0))
