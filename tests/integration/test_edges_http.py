"""Deployment edges on the real broker: table files per app id, advertised URLs, partition count checks."""

from __future__ import annotations

import dataclasses

from streamapp.runtime import commands
from tests import harness
from tests.support.services import ledger


@dataclasses.dataclass
class HostWorker(harness.Worker):
    """A worker reached at ``host`` (a loopback address other than 127.0.0.1, or ``[::1]``)."""

    host: str = "127.0.0.1"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.web_port}"


def worker(workers: harness.WorkerFactory, name: str, env: dict[str, str], **kw: object) -> harness.Worker:
    w = HostWorker(app_id=workers.app_id, data_dir=workers.base / name, env={**workers.env, **env},
                   log_path=workers.base / f"{name}.log", **kw)  # type: ignore[arg-type]
    workers.workers.append(w)
    return w


def test_data_dir__two_app_ids_share_it_without_sharing_table_files(workers, tmp_path):
    shared = tmp_path / "shared-data"
    first = worker(workers, "first", {})
    first.data_dir = shared
    first.start()
    status, body = first.request("POST", "/Test/k/Nap", {"tag": "first"})
    assert (status, body["count"]) == (200, 1), body
    first.stop()

    second = worker(workers, "second", {})
    second.app_id = harness.unique("other")
    second.data_dir = shared
    second.start()
    assert second.get("/state/Test/k")["state"] == {}, "the second app sees the first app's rows"
    status, body = second.request("POST", "/Test/k/Nap", {"tag": "second"})
    assert (status, body["count"]) == (200, 1), body


def key_on(partitions: set[int], count: int, prefix: str) -> str:
    """A Test key whose partition is one of ``partitions``."""
    for i in range(10_000):
        key = f"{prefix}{i}"
        if commands.partition_for(commands.object_key("Test", key), count) in partitions:
            return key
    raise AssertionError(f"no key lands on {partitions}")


def test_advertised_url__call_at_the_worker_not_owning_the_key_reaches_the_owner(workers, app_env):
    # One port, two addresses, as two hosts would have: a worker bound to every
    # IPv6 address ("::", so not reachable at 127.0.0.1) advertises [::1]; the
    # other, bound to 127.0.0.2, advertises that. Each must forward to the other.
    port = harness.free_port()
    wide = worker(workers, "wide", {"STREAMAPP_WEB_HOST": "::", "STREAMAPP_ADVERTISED_URL": f"http://[::1]:{port}"},
                  host="[::1]", web_port=port)
    narrow = worker(workers, "narrow", {"STREAMAPP_WEB_HOST": "127.0.0.2",
                                        "STREAMAPP_ADVERTISED_URL": f"http://127.0.0.2:{port}"},
                    host="127.0.0.2", web_port=port)
    wide.start()
    narrow.start()
    count = int(workers.env["STREAMAPP_PARTITIONS"])

    def split() -> tuple[set[int], set[int]] | None:
        a = set(wide.get("/health")["live_partitions"])
        b = set(narrow.get("/health")["live_partitions"])
        return (a, b) if a and b and a | b == set(range(count)) and not a & b else None

    owned = harness.wait_for(split, timeout=90, what="both workers to drive partitions")
    assert owned is not None
    for caller, owner, parts in ((narrow, wide, owned[0]), (wide, narrow, owned[1])):
        key = key_on(parts, count, f"via-{caller.data_dir.name}-")
        status, body = caller.request("POST", f"/Test/{key}/Nap", {"tag": key})
        assert status == 200 and body == {"tag": key, "count": 1}, (caller.url, status, body, caller.tail())
        assert owner.proc is not None
        ran = {e["pid"] for e in ledger(app_env["ledger"]) if e.get("tag") == key}
        assert ran == {owner.proc.pid}, f"{key} ran in {ran}, not in its owner {owner.proc.pid}"
    for w in (wide, narrow):
        assert w.get("/health")["waiters"] == 0


def test_partitions__fewer_than_the_internal_topic_has__worker_refuses_to_start(workers):
    first = workers.new()  # STREAMAPP_PARTITIONS=4 creates the internal topic with 4
    first.stop()
    again = workers.new(env={"STREAMAPP_PARTITIONS": "2"}, start=False)
    again.start(wait=False)
    assert again.proc is not None
    code = again.proc.wait(timeout=120)
    assert code != 0
    log = again.log()
    assert "STREAMAPP_PARTITIONS=2" in log and "has 4 partitions" in log, again.tail()
