"""UserFeed/ProcessPost: create a post, wait for moderation, update the feed."""

from __future__ import annotations

from typing import TYPE_CHECKING

from streamapp.durable import ObjectContext, Service
from streamapp.services.socialmedia import (
    DONE,
    PENDING,
    HttpClient,
    SocialMediaClient,
    SocialMediaPost,
    StubClient,
)

if TYPE_CHECKING:
    from streamapp.config import Settings

__all__ = ["DONE", "PENDING", "SocialMediaClient", "SocialMediaPost", "StubClient", "build"]


def build(settings: Settings, client: SocialMediaClient | None = None) -> Service:
    """The UserFeed service bound to a backend client and poll interval."""
    if client is None:
        client = HttpClient(settings.downstream_url) if settings.downstream_url else StubClient()
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
