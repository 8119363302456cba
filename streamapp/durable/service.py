"""Declaring keyed services and their handlers, apart from any transport.

    feed = Service("UserFeed")

    @feed.handler()                      # exclusive: one at a time per key
    async def ProcessPost(ctx: ObjectContext, post: SocialMediaPost) -> None: ...

    @tracker.handler(kind="shared")      # read-only, never queues behind the key
    async def getPackageInfo(ctx: SharedContext) -> PackageInfo | None: ...
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Literal

from streamapp.durable import codec

Kind = Literal["exclusive", "shared"]


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff between attempts of one invocation.

    ``max_attempts`` counts executions (1 = no retry). When attempts run out
    the invocation is dead-lettered (``on_exhausted="dead-letter"``) or paused
    until an operator resumes or kills it (``"pause"``).
    """

    initial_interval: float = 0.1
    factor: float = 2.0
    max_interval: float = 10.0
    max_attempts: int = 10
    on_exhausted: Literal["dead-letter", "pause"] = "dead-letter"

    def backoff(self, attempt: int) -> float:
        """Delay before execution ``attempt + 1`` after ``attempt`` failed (1-based)."""
        return float(min(self.max_interval, self.initial_interval * self.factor ** (attempt - 1)))


@dataclasses.dataclass(frozen=True)
class Handler:
    service: str
    name: str
    fn: Callable[..., Awaitable[Any]]
    kind: Kind
    input_type: Any  # None when the handler takes no input
    retry: RetryPolicy

    @property
    def method(self) -> str:
        return f"{self.service}/{self.name}"

    def decode_input(self, payload: Any) -> Any:
        if self.input_type is None:
            return None
        return codec.decode(payload, self.input_type, "input")


class Service:
    """A keyed service (a Restate "virtual object"): one actor per key."""

    def __init__(self, name: str, retry: RetryPolicy | None = None) -> None:
        self.name = name
        self.retry = retry or RetryPolicy()
        self.handlers: dict[str, Handler] = {}

    def handler(
        self,
        name: str | None = None,
        *,
        kind: Kind = "exclusive",
        retry: RetryPolicy | None = None,
    ) -> Callable[[Callable[..., Awaitable[Any]]], Callable[..., Awaitable[Any]]]:
        def register(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
            if not inspect.iscoroutinefunction(fn):
                raise TypeError(f"handler {fn.__name__} must be async")
            params = list(inspect.signature(fn).parameters)
            if len(params) not in (1, 2):
                raise TypeError(f"handler {fn.__name__} takes (ctx) or (ctx, input)")
            input_type = typing.get_type_hints(fn).get(params[1], Any) if len(params) == 2 else None
            handler_name = name or fn.__name__
            self.handlers[handler_name] = Handler(
                service=self.name,
                name=handler_name,
                fn=fn,
                kind=kind,
                input_type=input_type,
                retry=retry or self.retry,
            )
            return fn

        return register


class Registry:
    """The services one app serves, looked up by name."""

    def __init__(self, services: Iterable[Service] = ()) -> None:
        self.services: dict[str, Service] = {}
        for svc in services:
            self.add(svc)

    def add(self, svc: Service) -> None:
        if svc.name in self.services:
            raise ValueError(f"service {svc.name} registered twice")
        self.services[svc.name] = svc

    def lookup(self, service: str, handler: str) -> Handler | None:
        svc = self.services.get(service)
        return svc.handlers.get(handler) if svc else None
