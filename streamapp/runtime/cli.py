"""``streamapp`` command line: Faust's CLI (``worker`` ...) plus streamapp's verbs.

    streamapp worker -l info
    streamapp kv get PackageTracker package123
    streamapp invocations [--service S] [--handler H] [--key K] [--status S] [--json]
    streamapp invocations resume|kill|cancel|purge INVOCATION_ID
    streamapp invocations resume|kill|cancel --service S ... (every match; or --all)
    streamapp dead-letters [--service S] [--reason R] ... [--json]
    streamapp dead-letters replay --service S ... (or --all)

The verbs talk to a running worker over HTTP (``--url``, default the local
worker on STREAMAPP_WEB_PORT); any worker answers for every key.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any
from urllib.parse import urlencode

import aiohttp
from faust.cli import AppCommand, argument, option

from streamapp.config import Settings


def default_url() -> str:
    settings = Settings.from_env()
    return os.environ.get("STREAMAPP_URL", f"http://127.0.0.1:{settings.web_port}")


async def request(url: str, method: str, path: str) -> tuple[int, Any]:
    headers = {}
    if os.environ.get("STREAMAPP_OPERATOR_TOKEN"):
        headers["authorization"] = f"Bearer {os.environ['STREAMAPP_OPERATOR_TOKEN']}"
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            async with session.request(method, url.rstrip("/") + path, headers=headers) as resp:
                return resp.status, await resp.json(content_type=None)
    except (aiohttp.ClientError, OSError) as exc:
        raise SystemExit(f"cannot reach the worker at {url}: {exc}") from None


def render_state(service: str, key: str, state: dict[str, Any]) -> str:
    """The key's state, laid out like ``restate kv get``."""
    lines = ["🤖 State:", "―" * 9, "", f" Service  {service}", f" Key      {key}", ""]
    if not state:
        lines.append(" (no state)")
        return "\n".join(lines)
    width = max(len("KEY"), *(len(k) for k in state))
    lines.append(f" {'KEY':<{width}}  VALUE")
    for name in sorted(state):
        text = json.dumps(state[name], indent=2, ensure_ascii=False).splitlines()
        lines.append(f" {name:<{width}}  {text[0]}")
        lines.extend(f" {'':<{width}}  {rest}" for rest in text[1:])
    return "\n".join(lines)


INVOCATION_HEADERS = ("ID", "METHOD", "KEY", "STATUS", "ATTEMPTS", "NEXT WAKE-UP")


def invocation_rows(rows: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    """One row per invocation, in ``INVOCATION_HEADERS`` order (Faust's CLI draws the table)."""
    return [(r["id"], r["method"], r["key"], r["status"], str(r["attempts"]),
             _clock(r["wakeAt"]) if r.get("wakeAt") else "-")
            for r in rows]


def _clock(ts: float) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def install(app: Any) -> None:
    @app.command(
        argument("verb", type=str),
        argument("service", type=str),
        argument("key", type=str),
        option("--url", type=str, default=None, help="worker base URL"),
    )
    async def kv(self: AppCommand, verb: str, service: str, key: str, url: str | None) -> None:
        """Show a key's state: kv get SERVICE KEY."""
        if verb != "get":
            raise SystemExit(f"unknown kv verb {verb!r}: use `kv get SERVICE KEY`")
        status, body = await request(url or default_url(), "GET", f"/state/{service}/{key}")
        if status != 200:
            raise SystemExit(f"error {status}: {body.get('error') if isinstance(body, dict) else body}")
        print(render_state(service, key, body["state"]))

    @app.command(
        argument("action", type=str, required=False),
        argument("invocation_id", type=str, required=False),
        option("--url", type=str, default=None, help="worker base URL"),
        option("--json", "as_json", is_flag=True, default=False, help="print JSON"),
        option("--service", type=str, default=None, help="only this service's invocations"),
        option("--handler", type=str, default=None, help="only this handler's"),
        option("--key", type=str, default=None, help="only this key's"),
        option("--status", type=str, default=None, help="only invocations in this status"),
        option("--all", "every", is_flag=True, default=False, help="act on every unfinished invocation"),
    )
    async def invocations(self: AppCommand, action: str | None, invocation_id: str | None, url: str | None,
                          as_json: bool, service: str | None, handler: str | None, key: str | None,
                          status: str | None, every: bool) -> None:
        """List unfinished invocations; resume|kill|cancel|purge INVOCATION_ID; or resume|kill|cancel every match."""
        base = url or default_url()
        filters = {"service": service, "handler": handler, "key": key, "status": status}
        query = urlencode({name: value for name, value in filters.items() if value})
        if action is None:
            code, body = await request(base, "GET", "/invocations" + (f"?{query}" if query else ""))
            if code != 200:
                raise SystemExit(f"error {code}: {body}")
            if as_json:
                print(json.dumps(body, indent=2))
            elif not body["invocations"]:
                print("no unfinished invocations" + (" match" if query else ""))
            else:  # Faust's table (JSON rows under the global ``--json``, as bytes when orjson is installed)
                out: str | bytes = self.tabulate(invocation_rows(body["invocations"]), headers=INVOCATION_HEADERS,
                                                 title="Unfinished invocations")
                print(out.decode() if isinstance(out, bytes) else out)
            return
        if action not in ACTIONS or (invocation_id is None and (action == "purge" or not (query or every))):
            raise SystemExit(USAGE)
        if invocation_id is not None:
            code, body = await request(base, "POST", f"/invocations/{invocation_id}/{action}")
        else:
            code, body = await request(base, "POST", f"/invocations/bulk/{action}?{query or 'all=true'}")
        if code != 202:
            raise SystemExit(f"error {code}: {body.get('error') if isinstance(body, dict) else body}")
        if as_json:
            print(json.dumps(body, indent=2))
        elif invocation_id is not None:
            print(f"{action} requested for {invocation_id}")
        else:
            print(f"{action} requested for {body['matched']} invocation(s)"
                  + (f"; peers not reached: {', '.join(body['unreachable'])}" if body.get("unreachable") else ""))


    @app.command(
        argument("action", type=str, required=False),
        option("--url", type=str, default=None, help="worker base URL"),
        option("--json", "as_json", is_flag=True, default=False, help="print JSON"),
        option("--service", type=str, default=None, help="only this service's dead letters"),
        option("--handler", type=str, default=None, help="only this handler's"),
        option("--key", type=str, default=None, help="only this key's"),
        option("--reason", type=str, default=None, help="only those whose reason contains this text"),
        option("--since", type=float, default=None, help="only those written at or after (epoch seconds)"),
        option("--until", type=float, default=None, help="only those written before (epoch seconds)"),
        option("--all", "every", is_flag=True, default=False, help="replay every dead letter"),
    )
    async def dead_letters(self: AppCommand, action: str | None, url: str | None, as_json: bool,
                           service: str | None, handler: str | None, key: str | None, reason: str | None,
                           since: float | None, until: float | None, every: bool) -> None:
        """List dead letters with their reasons, or replay the matches into their handlers."""
        filters = {"service": service, "handler": handler, "key": key, "reason": reason, "since": since,
                   "until": until}
        query = urlencode({name: value for name, value in filters.items() if value is not None})
        base = url or default_url()
        if action is None:
            code, body = await request(base, "GET", "/dead-letters" + (f"?{query}" if query else ""))
            if code != 200:
                raise SystemExit(f"error {code}: {body.get('error') if isinstance(body, dict) else body}")
            if as_json:
                print(json.dumps(body, indent=2))
                return
            rows = [(str(d["offset"]), _clock(d["timestamp"]), f"{d['service']}/{d['handler']}", str(d["key"]),
                     d["reason"][:80]) for d in body["deadLetters"]]
            if not rows:
                print("no dead letters" + (" match" if query else ""))
                return
            out: str | bytes = self.tabulate(rows, headers=("OFFSET", "WRITTEN", "METHOD", "KEY", "REASON"),
                                             title="Dead letters")
            print(out.decode() if isinstance(out, bytes) else out)
            return
        if action != "replay" or not (query or every):
            raise SystemExit("usage: streamapp dead-letters [--service S --handler H --key K --reason R "
                             "--since T --until T] [--json]\n"
                             "       streamapp dead-letters replay (filters | --all)")
        code, body = await request(base, "POST", f"/dead-letters/replay?{query or 'all=true'}")
        if code != 202:
            raise SystemExit(f"error {code}: {body.get('error') if isinstance(body, dict) else body}")
        if as_json:
            print(json.dumps(body, indent=2))
            return
        print(f"replayed {body['replayed']} dead letter(s); skipped {len(body['skipped'])}")
        for skip in body["skipped"]:
            print(f"  offset {skip['offset']}: {skip['reason']}")


ACTIONS = ("resume", "kill", "cancel", "purge")
USAGE = ("usage: streamapp invocations [--service S --handler H --key K --status S] [--json]\n"
         "       streamapp invocations resume|kill|cancel|purge INVOCATION_ID\n"
         "       streamapp invocations resume|kill|cancel (--service S | --handler H | --key K | --status S | --all)")


def main() -> None:
    if sys.argv[1:2] == ["workers"]:  # N worker processes: the supervisor needs no Faust app of its own
        from streamapp.runtime import processes

        raise SystemExit(processes.main(sys.argv[2:]))
    from streamapp.runtime.main import app

    if len(sys.argv) == 1:
        sys.argv.append("--help")
    app.main()
