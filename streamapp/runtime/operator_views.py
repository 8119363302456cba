"""The operator's views: invocations listed with filters, an action on one, the same action on many.

    GET  /invocations[?service=&handler=&key=&status=]       unfinished ones, every worker's
         [&sort=created|wakeAt&limit=&offset=]               a page of them, and how many matched
    POST /invocations/{id}/resume|kill|cancel|purge          one invocation
    POST /invocations/bulk/resume|kill|cancel?service=...    every unfinished one the filters match
    GET  /dead-letters[?service=&handler=&key=&reason=&since=&until=&limit=]
    POST /dead-letters/replay?...                            replay the matches (``runtime/deadletters.py``)
    GET  /ui                                                 the page over these views (``runtime/ui/index.html``)

``web.Views`` mixes these in (they use its peer lookups). An action on one
invocation is made durable on its key's partition; a bulk action lists the
matching invocations of every worker that answers (as ``GET /invocations``
does, the peers that do not answer in time are named) and sends the action
for each. What each action does is ``runtime/operate.py``'s.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from importlib import resources
from typing import Any, NamedTuple
from urllib.parse import urlencode

from aiohttp import web

from streamapp.runtime import deadletters
from streamapp.runtime.ingress import Ingress
from streamapp.runtime.routes import FORWARDED, STATUSES

FILTERS = ("service", "handler", "key", "status")
ACTIONS = ("resume", "kill", "cancel", "purge")
BULK = {"resume": ("paused",), "kill": None, "cancel": None}  # action -> the statuses it acts on (None: any)
FINISHED = ("completed", "failed")


def json_error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


def view(rec: dict[str, Any], journal: bool = True, running: bool = False) -> dict[str, Any]:
    """What users see of an invocation record."""
    status = "running" if running and rec["status"] == "pending" else rec["status"]
    out = {
        "id": rec["id"], "service": rec["service"], "handler": rec["handler"], "key": rec["key"],
        "method": f"{rec['service']}/{rec['handler']}", "status": status, "attempts": rec["attempt"],
        "wakeAt": rec.get("wake_at") or rec.get("not_before") if rec["status"] in ("sleeping", "retrying",
                                                                                 "scheduled") else None,
        "created": rec["created"], "finished": rec.get("finished"), "result": rec.get("result"),
        "error": rec.get("error"),
    }
    if rec.get("cancel") is not None:
        out["cancelRequested"] = True  # the step under way finishes, then it ends (``operate.py``)
    if journal:
        out["journal"] = [{"type": e["t"], "name": e["name"]} for e in rec["journal"]]
    return out


class BadFilterError(ValueError):
    """A filter no invocation can match (an unknown status): 400."""


def filters_of(query: Mapping[str, str]) -> dict[str, str]:
    """The filters a request names (``FILTERS``); ``BadFilterError`` for a status no invocation can have."""
    found = {name: query[name] for name in FILTERS if query.get(name)}
    if "status" in query:  # present but empty too: a status no invocation has
        found["status"] = query["status"]
    if "status" in found and found["status"] not in STATUSES:
        raise BadFilterError(f"unknown status {found['status']!r}")
    return found


class Found(NamedTuple):
    """What looking an invocation up found (``find``)."""

    view: dict[str, Any] | None  # the invocation's view; None: not found
    silent: list[str]  # peers that did not answer in time
    moving: list[int]  # partitions no worker that answered covers
    here: set[int]  # partitions this worker covers: driven, and caught up with their log


def not_found(inv_id: str, found: Found) -> web.Response:
    if found.silent:  # one of them may hold it: not a definite 404
        return json_error(504, f"invocation {inv_id} not found here; {len(found.silent)} peer(s) did not answer "
                          "in time", unreachable=found.silent)
    if found.moving:  # a partition's tables are being restored, it is between owners, or it is catching up
        return json_error(503, f"invocation {inv_id} not found; partitions {found.moving} are not driven by any "
                          "worker that answered, or not caught up with their log (moving, restoring or catching "
                          "up); retry", moving=found.moving)
    # live_partitions: the partitions this answer covers (a peer's 404 tells the asking worker so)
    return json_error(404, f"unknown invocation {inv_id}", live_partitions=sorted(found.here))


def matches(row: dict[str, Any], filters: dict[str, str]) -> bool:
    return all(row.get(name) == value for name, value in filters.items())


# How a page of invocations is ordered: by creation, or by next wake-up (timers due soon first).
SORTS = {"created": lambda r: (r["created"], r["id"]),
         "wakeAt": lambda r: (r["wakeAt"] if r["wakeAt"] is not None else math.inf, r["created"], r["id"])}
FULL_VIEWS = 1000  # rows of a list read in full from the tables; a longer list shows their summaries
REPLAY_LIMIT = 10_000  # dead letters one replay request acts on (the answer says when more matched)


class OperatorViews:
    rt: Ingress
    _page: bytes | None = None

    async def ui(self, request: web.Request) -> web.Response:
        """The operator's page: one HTML file shipped in the package, reading the JSON views above."""
        if self._page is None:
            self._page = resources.files("streamapp.runtime").joinpath("ui/index.html").read_bytes()
        return web.Response(body=self._page, content_type="text/html", charset="utf-8")

    async def ask_peers(self, request: web.Request, path: str) -> tuple[list[tuple[int, Any]], list[str]]:
        raise NotImplementedError  # web.Views

    async def find(self, request: web.Request, inv_id: str) -> Found:
        raise NotImplementedError  # web.Views

    async def unfinished(self, request: web.Request, filters: dict[str, str], sort: str = "created",
                         limit: int | None = None, offset: int = 0) -> tuple[list[dict[str, Any]], list[str], int]:
        """A page of the unfinished invocations the filters match, of this worker and (unless forwarded) of its
        peers, ordered by ``sort``; the peers that did not answer, and how many matched in all."""
        order = SORTS[sort]
        rows = [row for rec, running in self.rt.unfinished()
                if matches(row := view(rec, journal=False, running=running), filters)]
        local = {row["id"] for row in rows}  # their views show a summary; a page's rows are read in full
        total = len(rows)
        silent: list[str] = []
        if not request.headers.get(FORWARDED):
            # Each peer sends its first offset + limit matches; the page is cut from all of them.
            query = {**filters, "sort": sort, **({"limit": str(offset + limit)} if limit is not None else {})}
            answers, silent = await self.ask_peers(request, f"/invocations?{urlencode(query)}")
            for status, body in answers:
                if status == 200:
                    rows.extend(body["invocations"])
                    total += body.get("total", len(body["invocations"]))
        rows.sort(key=order)
        end = None if limit is None else offset + limit
        page = rows[offset:end]
        if len(page) <= FULL_VIEWS:  # read in full (error, result) unless a list is very long
            for i, row in enumerate(page):
                held = self.rt.lookup(row["id"]) if row["id"] in local else None
                if held is not None and held[0].get("finished") is None:
                    page[i] = view(held[0], journal=False, running=row["status"] == "running")
        return page, silent, total

    async def invocations(self, request: web.Request) -> web.Response:
        query = request.query
        try:
            filters = filters_of(query)
            limit = int(query["limit"]) if "limit" in query else None
            offset = int(query["offset"]) if "offset" in query else 0
            sort = query.get("sort", "created")
            if sort not in SORTS or offset < 0 or (limit is not None and limit < 0):
                raise BadFilterError(f"sort is one of {sorted(SORTS)}; limit and offset are not negative")
        except (BadFilterError, ValueError) as exc:
            return json_error(400, str(exc), allowed=STATUSES)
        rows, silent, total = await self.unfinished(request, filters, sort, limit, offset)
        out: dict[str, Any] = {"invocations": rows, "total": total}
        if silent:
            out["unreachable"] = silent  # their invocations are missing from the list
        return web.json_response(out)

    async def operate(self, request: web.Request, action: str) -> web.Response:
        inv_id = request.match_info["id"]
        lookup = await self.find(request, inv_id)
        found = lookup.view
        if found is None:
            return not_found(inv_id, lookup)
        finished = found["status"] in FINISHED
        if action == "purge" and not finished:
            return json_error(409, f"invocation is {found['status']}, not finished: kill or cancel it first",
                              invocationId=inv_id)
        if action != "purge" and finished:
            return json_error(409, f"invocation finished already ({found['status']})", invocationId=inv_id)
        await self.rt.operate(found["service"], found["key"], inv_id, action)
        return web.json_response({"invocationId": inv_id, "action": action, "status": "Accepted"}, status=202)

    async def bulk(self, request: web.Request) -> web.Response:
        action = request.match_info["action"]
        if action not in BULK:
            return json_error(404, f"no bulk action {action!r}", allowed=sorted(BULK))
        try:
            filters = filters_of(request.query)
        except BadFilterError as exc:
            return json_error(400, str(exc), allowed=STATUSES)
        if request.query.get("all", "true") != "true" or (not filters and "all" not in request.query):
            return json_error(400, f"name at least one filter ({', '.join(FILTERS)}), or all=true")
        rows, silent, _ = await self.unfinished(request, filters)
        statuses = BULK[action]
        chosen = [row for row in rows if statuses is None or row["status"] in statuses]
        for row in chosen:
            await self.rt.operate(row["service"], row["key"], row["id"], action)
        out: dict[str, Any] = {"action": action, "matched": len(chosen), "invocationIds": [r["id"] for r in chosen],
                               "status": "Accepted"}
        if silent:
            out["unreachable"] = silent  # their invocations were not acted on
        return web.json_response(out, status=202)

    async def dead_letters(self, request: web.Request) -> web.Response:
        try:
            filters = deadletters.Filters.of(request.query)
            limit = int(request.query.get("limit", "1000"))
            if limit < 0:
                raise ValueError("limit must not be negative")
        except (deadletters.BadFilterError, ValueError) as exc:
            return json_error(400, str(exc))
        try:
            letters, more = await self.rt.dead_letters(filters, max(0, limit))
        except TimeoutError as exc:
            return json_error(504, str(exc))
        return web.json_response({"deadLetters": [letter.view() for letter in letters], "truncated": more})

    async def replay(self, request: web.Request) -> web.Response:
        try:
            filters = deadletters.Filters.of(request.query)
        except deadletters.BadFilterError as exc:
            return json_error(400, str(exc))
        if request.query.get("all", "true") != "true" or (filters.empty() and "all" not in request.query):
            return json_error(400, f"name at least one filter ({', '.join(deadletters.FILTERS)}), or all=true")
        try:
            letters, more = await self.rt.dead_letters(filters, REPLAY_LIMIT)
        except TimeoutError as exc:
            return json_error(504, str(exc))
        replayed, skipped = await self.rt.replay(letters)
        return web.json_response({"replayed": len(replayed), "invocationIds": replayed, "skipped": skipped,
                                  "truncated": more, "status": "Accepted"}, status=202)
