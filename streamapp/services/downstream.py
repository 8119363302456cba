"""The downstream social-media backend over HTTP: its client, and the command that serves it.

Run it on its own::

    python -m streamapp.services.downstream --host 127.0.0.1 --port 8090 \\
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
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import socket
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
from aiohttp import web

from streamapp.durable import RetryableError, TerminalError
from streamapp.services.downstream_server import IDEMPOTENCY_HEADER, Backend, make_app
from streamapp.services.userfeed import SocialMediaPost

__all__ = ["Backend", "DownstreamRejectedError", "DownstreamUnavailableError", "HttpClient", "main", "make_app"]


class DownstreamUnavailableError(RetryableError):
    """The backend did not answer, answered 5xx/408/429, or sent an unreadable body."""


class DownstreamRejectedError(TerminalError):
    """The backend refused the request (4xx): retrying would not help."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"downstream rejected the request: {status} {message}")
        self.status = status


# -- client ----------------------------------------------------------------
class HttpClient:
    """SocialMediaClient over HTTP. 4xx -> TerminalError; 5xx, timeouts, refusals -> retried."""

    def __init__(self, base_url: str, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _shared_session(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._loop is not loop:
            self._session, self._loop = aiohttp.ClientSession(timeout=self._timeout), loop
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _call(self, method: str, path: str, body: dict[str, Any] | None = None,
                    key: str | None = None) -> dict[str, Any]:
        url = f"{self.base_url}{path}"
        headers = {IDEMPOTENCY_HEADER: key} if key is not None else {}
        try:
            async with self._shared_session().request(method, url, json=body, headers=headers) as resp:
                text = await resp.text()
                status, retry_after = resp.status, resp.headers.get("Retry-After", "")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise DownstreamUnavailableError(f"{method} {url} failed: {exc!r}") from exc
        try:
            data = json.loads(text)
        except ValueError:
            data = {"error": text[:200]}
        if 200 <= status < 300 and isinstance(data, dict):
            return data
        message = data.get("error", text[:200]) if isinstance(data, dict) else text[:200]
        if 400 <= status < 500 and status not in (408, 429):
            raise DownstreamRejectedError(status, f"{method} {path}: {message}")
        delay = float(retry_after) if retry_after.isdigit() else None
        raise DownstreamUnavailableError(f"{method} {path} answered {status}: {message}", retry_after=delay)

    async def create_post(self, user_id: str, post: SocialMediaPost, idempotency_key: str) -> str:
        body = {"userId": user_id, "content": post.content, "metadata": post.metadata}
        return str((await self._call("POST", "/posts", body, idempotency_key))["postId"])

    async def get_post_status(self, post_id: str) -> str:
        return str((await self._call("GET", f"/posts/{quote(post_id, safe='')}/status"))["status"])

    async def update_user_feed(self, user_id: str, post_id: str, idempotency_key: str) -> None:
        await self._call("POST", f"/feeds/{quote(user_id, safe='')}", {"postId": post_id}, idempotency_key)


# -- command line ----------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m streamapp.services.downstream",
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
