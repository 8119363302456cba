"""Security defaults: loopback bind, operator token beyond loopback (actions and inspection), no secrets shown."""

from __future__ import annotations

import secrets
from typing import Any

import psutil

from tests import harness
from tests.support.services import ledger

OPERATE = ("kill", "resume", "cancel", "purge")
INSPECT = ("/state/Test/{key}", "/invocations", "/invocations/{inv}", "/dead-letters")
BULK = ("/invocations/bulk/kill?key={key}", "/invocations/bulk/cancel?all=true", "/dead-letters/replay?all=true")
NEVER = 3600.0  # a sleep that outlasts the test on any machine: the invocation is there to act on


def listening_addresses(worker: harness.Worker) -> set[str]:
    """IP addresses the worker process listens on for its web port."""
    assert worker.proc is not None
    conns = psutil.Process(worker.proc.pid).net_connections(kind="inet")
    return {c.laddr.ip for c in conns if c.status == psutil.CONN_LISTEN and c.laddr.port == worker.web_port}


def sleeping_invocation(worker: harness.Worker, key: str, token: str | None = None) -> str:
    status, body = worker.request("POST", f"/Test/{key}/Nap/send", {"tag": key, "seconds": NEVER})
    assert status == 202, body
    inv: str = body["invocationId"]
    harness.wait_for(lambda: invocation(worker, inv, token)["status"] == "sleeping", timeout=60,
                     what=f"{key} to sleep", detail=worker.tail)
    return inv


def invocation(worker: harness.Worker, inv: str, token: str | None) -> dict[str, Any]:
    """The invocation's view, read with the operator token."""
    headers = {"authorization": f"Bearer {token}"} if token else {}
    status, body = worker.request("GET", f"/invocations/{inv}", headers=headers, timeout=harness.READ_TIMEOUT)
    return body if status == 200 else {"status": None}  # type: ignore[no-any-return]


def test_default_bind__web_server_listens_on_loopback_only_and_operators_need_no_token(workers):
    worker = workers.new()
    assert listening_addresses(worker) == {"127.0.0.1"}
    inv = sleeping_invocation(worker, "local")
    status, body = worker.request("POST", f"/invocations/{inv}/kill")
    assert status == 202, body
    killed = harness.wait_for(lambda: worker.invocation(inv)["status"] == "failed" and worker.invocation(inv),
                              timeout=30, what="the kill to apply")
    assert "killed" in killed["error"]


def test_public_bind_without_token__operator_actions_and_inspection_are_refused_with_403(workers, app_env, tmp_path):
    worker = workers.new(env={"STREAMAPP_WEB_HOST": "0.0.0.0"})
    assert listening_addresses(worker) == {"0.0.0.0"}
    gate = tmp_path / "gate"  # holds the invocation between its steps until every refusal is done
    status, body = worker.request("POST", "/Test/public/Nap/send", {"tag": "public", "gate": str(gate)})
    assert status == 202, body
    inv = body["invocationId"]
    # Inspection is refused here, so the ledger tells when the invocation is under way.
    harness.wait_for(lambda: [e for e in ledger(app_env["ledger"]) if e["tag"] == "public"], timeout=60,
                     what="the invocation to start", detail=worker.tail)
    for path in INSPECT:
        status, body = worker.request("GET", path.format(key="public", inv=inv))
        assert status == 403 and "STREAMAPP_OPERATOR_TOKEN" in body["error"], (path, status, body)
    for action in OPERATE:
        for headers in ({}, {"authorization": "Bearer anything"}):
            status, body = worker.request("POST", f"/invocations/{inv}/{action}", headers=headers)
            assert status == 403 and "STREAMAPP_OPERATOR_TOKEN" in body["error"], (action, status, body)
    status, body = worker.request("POST", "/invocations/inv_unknown/kill")
    assert status == 403, "refused before looking the invocation up"
    for path in BULK:
        status, body = worker.request("POST", path.format(key="public"))
        assert status == 403 and "STREAMAPP_OPERATOR_TOKEN" in body["error"], (path, status, body)
    gate.touch()
    # The call answers once the invocation finished: a refused kill must not have killed it.
    status, body = worker.request("POST", "/Test/public/Nap", {"tag": "after", "seconds": 0})
    assert status == 200 and body["count"] == 2, (status, body)


def test_public_bind_with_token__bearer_token_required_and_never_shown(workers):
    token = secrets.token_urlsafe(24)
    password = secrets.token_hex(12)
    worker = workers.new(env={
        "STREAMAPP_WEB_HOST": "0.0.0.0",
        "STREAMAPP_OPERATOR_TOKEN": token,
        # Another secret in configuration: credentials in the downstream URL (never called here).
        "STREAMAPP_DOWNSTREAM_URL": f"http://streamapp:{password}@127.0.0.1:9",
    })
    inv = sleeping_invocation(worker, "guarded", token=token)
    refused: list[dict[str, str]] = [
        {}, {"authorization": token}, {"authorization": f"Bearer {token}x"}, {"authorization": f"Basic {token}"},
        {"authorization": "Bearer "}, {"x-operator-token": token},
    ]
    for action in OPERATE:
        for headers in refused:
            status, body = worker.request("POST", f"/invocations/{inv}/{action}", headers=headers)
            assert status == 401 and isinstance(body, dict) and "error" in body, (action, headers, status, body)
    for path in INSPECT:
        for headers in refused:
            status, body = worker.request("GET", path.format(key="guarded", inv=inv), headers=headers)
            assert status == 401 and isinstance(body, dict) and "error" in body, (path, headers, status, body)
    for path in BULK:
        for headers in refused:
            status, body = worker.request("POST", path.format(key="guarded"), headers=headers)
            assert status == 401 and isinstance(body, dict) and "error" in body, (path, headers, status, body)
    assert invocation(worker, inv, token)["status"] == "sleeping"
    bearer = {"authorization": f"Bearer {token}"}
    status, body = worker.request("POST", f"/invocations/{inv}/kill", headers=bearer)
    assert status == 202, body
    harness.wait_for(lambda: invocation(worker, inv, token)["status"] == "failed", timeout=30,
                     what="the kill to apply")

    seen: dict[str, Any] = {}
    for path in ("/health", "/subscriptions", "/state/Test/guarded", "/invocations", f"/invocations/{inv}",
                 "/dead-letters", "/openapi.json", "/Test/guarded/Count"):
        status, body = worker.request("GET", path, headers=bearer)
        assert status == 200, (path, body)
        seen[path] = body
    for secret in (token, password):
        for path, body in seen.items():
            assert secret not in str(body), f"a configured secret shows in {path}"
        assert secret not in worker.log(), "a configured secret shows in the worker log"
