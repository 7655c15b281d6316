"""The decode cache's lock between processes (``filelock``, on every OS): a second holder
waits until the first lets go, so concurrent workers decode a folder once."""

from __future__ import annotations

import threading
import time

from trainer.data import decode


def test_the_decode_cache_lock_excludes_a_second_holder_until_the_first_lets_go(tmp_path):
    path = tmp_path / "cache.lock"
    held, order = threading.Event(), []

    def first() -> None:
        with decode._locked(path):
            held.set()
            time.sleep(0.5)
            order.append("first out")

    t = threading.Thread(target=first)
    t.start()
    held.wait(10)
    with decode._locked(path):
        order.append("second in")
    t.join()
    assert order == ["first out", "second in"]
    with decode._locked(path):  # a lock file left from before is taken again
        order.append("again")
    assert order[-1] == "again"
