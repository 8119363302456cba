"""UserFeed/ProcessPost: create a post, wait for moderation, update the feed."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

from streamapp.config import env_number
from streamapp.durable import ObjectContext, Service
from streamapp.services.socialmedia import (
    DONE,
    PENDING,
    HttpClient,
    SocialMediaClient,
    SocialMediaPost,
    StubClient,
)

__all__ = ["DONE", "PENDING", "Config", "SocialMediaClient", "SocialMediaPost", "StubClient", "build"]


@dataclasses.dataclass(frozen=True)
class Config:
    """UserFeed's own settings (not the runtime's)."""

    poll_interval: float = 5.0  # seconds of durable sleep between moderation polls
    downstream_url: str | None = None  # the social-media backend; None: in-process stubs print the seed's lines

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Config:
        env = os.environ if env is None else env
        return cls(
            poll_interval=env_number(env, "STREAMAPP_MODERATION_POLL_INTERVAL", cls.poll_interval, float, low=0.001),
            downstream_url=env.get("STREAMAPP_DOWNSTREAM_URL") or None,
        )


def build(config: Config | None = None, client: SocialMediaClient | None = None) -> Service:
    """The UserFeed service bound to a backend client and poll interval."""
    config = config if config is not None else Config()
    if client is None:
        client = HttpClient(config.downstream_url) if config.downstream_url else StubClient()
    backend: SocialMediaClient = client
    interval = config.poll_interval
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
