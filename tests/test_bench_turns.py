"""bench/proxy.py's `interleave` (bench/proxy_mysql.py's too) runs the paths in an order rotated
each round: a fixed order favours one place (docs/performance.md, the MySQL path). The harness
is run for real with paths that only note when they are called; nothing is timed."""

from __future__ import annotations

import itertools
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import proxy  # bench/proxy.py, as bench/proxy_mysql.py imports it


async def test_each_path_takes_each_place_in_turn() -> None:
    calls: list[str] = []

    def path(name: str) -> Callable[[int], Awaitable[None]]:
        async def call(i: int) -> None:
            calls.append(name)
        return call

    names = ["m1", "m2", "m3"]
    rounds = proxy.ROUNDS
    summaries, cpu = await proxy.interleave([(n, path(n)) for n in names], {}, rounds, 1)
    assert set(summaries) == set(names) and cpu == {}
    # Each turn is a run of calls (the first round's: its warm-up, then one measured call).
    taken = [name for name, _ in itertools.groupby(calls)]
    orders = [taken[k:k + 3] for k in range(0, len(taken), 3)]
    assert len(orders) == rounds
    assert orders[:4] == [["m1", "m2", "m3"], ["m2", "m3", "m1"], ["m3", "m1", "m2"],
                          ["m1", "m2", "m3"]]
    for place in range(3):  # every path in every place, as often as the rounds allow
        counts = {n: sum(order[place] == n for order in orders) for n in names}
        assert min(counts.values()) == rounds // 3, counts
