"""`open_core` closes what it opened, in reverse order, when a step fails half-way: the
heartbeat's row is gone, the background tasks have ended, the store and the sinks are closed,
and the next opening of the same state works."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from appliance import core as core_module
from appliance.core import open_core
from appliance.store.base import Store
from tests.support.app import TEST_TUNING, make_settings, prepare


class Refused(Exception):
    pass


def _open_by_this_process(path: Path) -> bool:
    fds = Path("/proc/self/fd")
    return any(_target(fd) == str(path) for fd in fds.iterdir())


def _target(fd: Path) -> str:
    try:
        return str(fd.readlink())
    except OSError:
        return ""


async def test_a_failure_half_way_closes_everything_opened_before_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = tmp_path / "state"
    await prepare(state, users=())
    sink = tmp_path / "audit.jsonl"
    # Retention is opened after the heartbeat, the change follower, the verifier and the anchors:
    # it fails here, so everything before it must be undone.
    s = make_settings(state, audit_keep_days="30",
                      audit_sinks=f"file:{sink}")
    opened: list[Store] = []
    real_open_store = core_module.open_store

    async def recording_open_store(*args: object, **kwargs: object) -> Store:
        store = await real_open_store(*args, **kwargs)  # type: ignore[arg-type]  # passed through
        opened.append(store)
        return store

    def refusing_pruner(*args: object, **kwargs: object) -> None:
        raise Refused("stop half-way")

    monkeypatch.setattr(core_module, "open_store", recording_open_store)
    monkeypatch.setattr(core_module, "Pruner", refusing_pruner)
    before = set(asyncio.all_tasks())
    with pytest.raises(Refused):
        async with open_core(s, serving=True, tuning=TEST_TUNING):
            raise AssertionError("the core must not be handed over")
    await asyncio.sleep(0)
    left = {t for t in asyncio.all_tasks() - before if not t.done()}
    assert not left, [t.get_name() for t in left]
    assert len(opened) == 1
    with pytest.raises(Exception):  # noqa: B017 - any error: the store is closed
        await opened[0].fetch_one("SELECT 1")
    assert sink.exists() and not _open_by_this_process(sink)
    monkeypatch.undo()
    async with open_core(s, tuning=TEST_TUNING) as core:  # not serving: no heartbeat of its own
        left_rows = await core.store.fetch_one("SELECT count(*) AS n FROM instances")
    assert left_rows is not None and left_rows["n"] == 0
    async with open_core(s, serving=True, tuning=TEST_TUNING) as core:
        assert core.audit is not None
