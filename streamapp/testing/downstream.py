"""The downstream social-media backend that tests, chaos runs and the README walkthrough use.

Run it on its own::

    python -m streamapp.testing.downstream --host 127.0.0.1 --port 8090 \\
        [--pending-ratio 0.8] [--pending-polls N] [--journal PATH]

Endpoints (JSON in, JSON out; errors are ``{"error": ...}``)::

    POST /posts                  {"userId","content","metadata"} + idempotency-key -> {"postId"}
    GET  /posts/{postId}/status  -> {"status": "PENDING" | "DONE"}
    POST /feeds/{userId}         {"postId"} + idempotency-key -> the recorded update
    GET  /records                posts, feed updates and duplicate-attempt counts
    POST /reset                  forget everything (and truncate the journal)

A repeated idempotency key records nothing new and answers as the first call
did; the repeat is counted. With ``--journal`` every record is appended to a
JSON-lines file and replayed at start, so a test can restart the backend.
UserFeed talks to it through ``streamapp.services.socialmedia.HttpClient``.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import socket
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from streamapp.services.socialmedia import DONE, IDEMPOTENCY_HEADER, PENDING

__all__ = ["Backend", "main", "make_app"]

logger = logging.getLogger(__name__)

class Backend:
    """In-memory records, optionally journaled to a JSON-lines file."""

    def __init__(self, pending_ratio: float = 0.8, pending_polls: int | None = None,
                 journal: Path | None = None, rng: random.Random | None = None) -> None:
        self.pending_ratio = pending_ratio
        self.pending_polls = pending_polls
        self.rng = rng or random.Random()
        self.journal = journal
        self._clear()
        if journal is not None and journal.exists():
            for number, line in enumerate(journal.read_text().splitlines(), 1):
                try:
                    self._apply(json.loads(line))
                except (ValueError, KeyError):  # a line torn by a kill
                    logger.warning("Skipping unreadable journal line path=%s line=%d", journal, number)

    def _clear(self) -> None:
        self.posts: dict[str, dict[str, Any]] = {}        # postId -> post
        self.post_keys: dict[str, str] = {}               # idempotency key -> postId
        self.feed_updates: dict[str, dict[str, Any]] = {}  # idempotency key -> update
        self.duplicate_posts = 0
        self.duplicate_feeds = 0
        self.polls: dict[str, int] = {}                   # postId -> polls so far (not journaled)
        self.seq = 0

    def _apply(self, event: dict[str, Any]) -> None:
        kind = event.pop("t")
        if kind == "post":
            self.posts[event["postId"]] = event
            self.post_keys[event["idempotencyKey"]] = event["postId"]
            self.seq = max(self.seq, event["createdAt"])
        elif kind == "feed":
            self.feed_updates[event["idempotencyKey"]] = event
            self.seq = max(self.seq, event["seq"])
        elif kind == "dup_post":
            self.duplicate_posts += 1
        elif kind == "dup_feed":
            self.duplicate_feeds += 1

    def _record(self, event: dict[str, Any]) -> None:
        if self.journal is not None:
            with self.journal.open("a") as f:
                f.write(json.dumps(event) + "\n")
        self._apply(event)

    def create_post(self, user_id: str, content: str, metadata: str, key: str) -> str:
        if key in self.post_keys:
            logger.info("Duplicate post attempt idempotencyKey=%s postId=%s", key, self.post_keys[key])
            self._record({"t": "dup_post", "idempotencyKey": key})
            return self.post_keys[key]
        post_id = str(uuid.uuid4())
        self._record({"t": "post", "postId": post_id, "userId": user_id, "content": content, "metadata": metadata,
                      "idempotencyKey": key, "createdAt": self.seq + 1})
        print(f"Created post {post_id} for user {user_id} with content: {content}", flush=True)
        return post_id

    def status(self, post_id: str) -> str:
        self.polls[post_id] = polls = self.polls.get(post_id, 0) + 1
        if self.pending_polls is not None:
            return PENDING if polls <= self.pending_polls else DONE
        return PENDING if self.rng.random() < self.pending_ratio else DONE

    def update_feed(self, user_id: str, post_id: str, key: str) -> dict[str, Any]:
        if key in self.feed_updates:
            logger.info("Duplicate feed update attempt idempotencyKey=%s postId=%s", key, post_id)
            self._record({"t": "dup_feed", "idempotencyKey": key})
        else:
            self._record({"t": "feed", "userId": user_id, "postId": post_id, "idempotencyKey": key,
                          "seq": self.seq + 1})
            print(f"Updating the user feed for user {user_id} with post {post_id}", flush=True)
        return self.feed_updates[key]

    def records(self) -> dict[str, Any]:
        return {"posts": list(self.posts.values()), "feedUpdates": list(self.feed_updates.values()),
                "duplicatePostAttempts": self.duplicate_posts, "duplicateFeedAttempts": self.duplicate_feeds}

    def reset(self) -> None:
        self._clear()
        if self.journal is not None:
            self.journal.write_text("")


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


@web.middleware
async def _json_errors(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                       ) -> web.StreamResponse:
    """Answer aiohttp's own errors (unknown route, wrong method) as JSON too."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _error(exc.status, exc.reason)


async def _body(request: web.Request, *fields: str) -> tuple[str, dict[str, Any]]:
    """The idempotency key and a JSON object body with the named non-empty strings, or a 400."""
    key = request.headers.get(IDEMPOTENCY_HEADER, "")
    if not key:
        raise web.HTTPBadRequest(reason=f"missing {IDEMPOTENCY_HEADER} header")
    try:
        body = await request.json()
    except ValueError:
        raise web.HTTPBadRequest(reason="body is not valid JSON") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(reason="body must be a JSON object")
    missing = [f for f in fields if not isinstance(body.get(f), str) or not body[f]]
    if missing:
        raise web.HTTPBadRequest(reason=f"missing or non-string fields: {', '.join(missing)}")
    return key, body


def make_app(backend: Backend) -> web.Application:
    async def create_post(request: web.Request) -> web.Response:
        key, body = await _body(request, "userId", "content")
        metadata = body.get("metadata", "")
        if not isinstance(metadata, str):
            return _error(400, "metadata must be a string")
        return web.json_response({"postId": backend.create_post(body["userId"], body["content"], metadata, key)})

    async def post_status(request: web.Request) -> web.Response:
        post_id = request.match_info["postId"]
        if post_id not in backend.posts:
            return _error(404, f"unknown post {post_id}")
        return web.json_response({"status": backend.status(post_id)})

    async def update_feed(request: web.Request) -> web.Response:
        key, body = await _body(request, "postId")
        if body["postId"] not in backend.posts:
            return _error(404, f"unknown post {body['postId']}")
        return web.json_response(backend.update_feed(request.match_info["userId"], body["postId"], key))

    async def records(request: web.Request) -> web.Response:
        return web.json_response(backend.records())

    async def reset(request: web.Request) -> web.Response:
        backend.reset()
        return web.json_response({})

    app = web.Application(middlewares=[_json_errors])
    app.router.add_post("/posts", create_post)
    app.router.add_get("/posts/{postId}/status", post_status)
    app.router.add_post("/feeds/{userId}", update_feed)
    app.router.add_get("/records", records)
    app.router.add_post("/reset", reset)
    return app


# -- command line ----------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m streamapp.testing.downstream",
                                     description="The downstream social-media backend.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090, help="0 picks a free port; the line printed names it")
    parser.add_argument("--pending-ratio", type=float, default=0.8, help="chance a status poll answers PENDING")
    parser.add_argument("--pending-polls", type=int, default=None, help="PENDING for the first N polls, then DONE")
    parser.add_argument("--journal", type=Path, default=None, help="append records to this JSON-lines file")
    args = parser.parse_args(argv)
    if not 0.0 <= args.pending_ratio <= 1.0:
        parser.error("--pending-ratio must be between 0 and 1")
    if args.pending_polls is not None and args.pending_polls < 0:
        parser.error("--pending-polls must not be negative")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    backend = Backend(args.pending_ratio, args.pending_polls, args.journal)
    sock = socket.create_server((args.host, args.port))
    host, port = sock.getsockname()[:2]
    print(f"Downstream backend listening on http://{host}:{port}", flush=True)
    web.run_app(make_app(backend), sock=sock, print=None, access_log=None)


if __name__ == "__main__":
    main()
