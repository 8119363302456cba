"""UserFeed/ProcessPost: create a post, wait for moderation, update the feed."""

from __future__ import annotations

import dataclasses
import random
import uuid
from typing import Protocol

from streamapp.config import Settings
from streamapp.durable import ObjectContext, Service

PENDING = "PENDING"
DONE = "DONE"


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


def build(settings: Settings, client: SocialMediaClient | None = None) -> Service:
    """The UserFeed service bound to a backend client and poll interval."""
    if client is None:
        if settings.downstream_url:
            from streamapp.services.downstream import HttpClient

            client = HttpClient(settings.downstream_url)
        else:
            client = StubClient()
    backend: SocialMediaClient = client
    interval = settings.moderation_poll_interval
    feed = Service("UserFeed")

    @feed.handler()
    async def ProcessPost(ctx: ObjectContext, post: SocialMediaPost) -> None:
        user_id = ctx.key

        async def create() -> str:
            return await backend.create_post(user_id, post, ctx.idempotency_key)

        post_id = await ctx.run("create-post", create)
        while await ctx.run("get-post-status", backend.get_post_status, post_id) == PENDING:
            print(f"Content moderation for post {post_id} is still pending... "
                  f"Will check again in {interval:g} seconds", flush=True)
            await ctx.sleep(interval)
        print(f"Content moderation for post {post_id} is done", flush=True)

        async def update() -> None:
            await backend.update_user_feed(user_id, post_id, ctx.idempotency_key)

        await ctx.run("update-user-feed", update)

    return feed
