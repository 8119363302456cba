"""The downstream social-media backend as UserFeed sees it: the post, the client
protocol, an in-process stub, and the client over HTTP.

``HttpClient`` talks to the backend served by ``python -m streamapp.testing.downstream``
(endpoints described there): 4xx answers end the step terminally, 5xx,
timeouts and refused connections are retried.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import uuid
from typing import Any, Protocol
from urllib.parse import quote

import aiohttp

from streamapp.durable import RetryableError, TerminalError

__all__ = ["DONE", "IDEMPOTENCY_HEADER", "PENDING", "DownstreamRejectedError", "DownstreamUnavailableError",
           "HttpClient", "SocialMediaClient", "SocialMediaPost", "StubClient"]

PENDING = "PENDING"
DONE = "DONE"
IDEMPOTENCY_HEADER = "idempotency-key"


@dataclasses.dataclass
class SocialMediaPost:
    content: str
    metadata: str


class SocialMediaClient(Protocol):
    """The downstream social-media backend."""

    async def create_post(self, user_id: str, post: SocialMediaPost, idempotency_key: str) -> str: ...
    async def get_post_status(self, post_id: str) -> str: ...
    async def update_user_feed(self, user_id: str, post_id: str, idempotency_key: str) -> None: ...


class StubClient:
    """In-process backend that prints what the seed's stubs print."""

    def __init__(self, pending_ratio: float = 0.8) -> None:
        self.pending_ratio = pending_ratio

    async def create_post(self, user_id: str, post: SocialMediaPost, idempotency_key: str) -> str:
        post_id = str(uuid.uuid4())
        print(f"Created post {post_id} for user {user_id} with content: {post.content}", flush=True)
        return post_id

    async def get_post_status(self, post_id: str) -> str:
        return PENDING if random.random() < self.pending_ratio else DONE

    async def update_user_feed(self, user_id: str, post_id: str, idempotency_key: str) -> None:
        print(f"Updating the user feed for user {user_id} with post {post_id}", flush=True)


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
