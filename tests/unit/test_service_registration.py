"""Declaring services and handlers: registration errors, input types, policies, errors."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from streamapp.durable import (
    InvalidInputError,
    KilledError,
    NonDeterminismError,
    ObjectContext,
    Registry,
    RetryableError,
    RetryPolicy,
    Service,
    SharedContext,
    StreamAppError,
    TerminalError,
)
from streamapp.durable.errors import Suspended


@dataclasses.dataclass
class Greeting:
    name: str


def test_handler__sync_function_is_rejected() -> None:
    svc = Service("S")

    def Sync(ctx: ObjectContext) -> None:
        pass

    with pytest.raises(TypeError, match=r"^handler Sync must be async$"):
        svc.handler()(Sync)  # type: ignore[arg-type]
    assert svc.handlers == {}


@pytest.mark.parametrize("arity", [0, 3])
def test_handler__wrong_arity_is_rejected(arity: int) -> None:
    svc = Service("S")

    async def NoArgs() -> None:
        pass

    async def ThreeArgs(ctx: ObjectContext, a: int, b: int) -> None:
        pass

    fn = NoArgs if arity == 0 else ThreeArgs
    with pytest.raises(TypeError, match=rf"^handler {fn.__name__} takes \(ctx\) or \(ctx, input\)$"):
        svc.handler()(fn)
    assert svc.handlers == {}


def test_handler__input_type_is_read_from_the_second_parameter() -> None:
    svc = Service("S")

    @svc.handler()
    async def NoInput(ctx: ObjectContext) -> None: ...

    @svc.handler()
    async def Typed(ctx: ObjectContext, greeting: Greeting) -> None: ...

    @svc.handler()
    async def Optional(ctx: ObjectContext, count: int | None) -> None: ...

    @svc.handler()
    async def Untyped(ctx, payload):  # type: ignore[no-untyped-def]
        ...

    types = {name: h.input_type for name, h in svc.handlers.items()}
    assert types == {"NoInput": None, "Typed": Greeting, "Optional": int | None, "Untyped": Any}


def test_handler__decode_input_uses_the_input_type() -> None:
    svc = Service("S")

    @svc.handler()
    async def Typed(ctx: ObjectContext, greeting: Greeting) -> None: ...

    @svc.handler()
    async def NoInput(ctx: ObjectContext) -> None: ...

    assert svc.handlers["Typed"].decode_input({"name": "Bo"}) == Greeting("Bo")
    with pytest.raises(InvalidInputError, match=r"^input.name: expected a string, got null$"):
        svc.handlers["Typed"].decode_input({"name": None})
    assert svc.handlers["NoInput"].decode_input({"ignored": True}) is None


def test_handler__name_kind_and_method() -> None:
    svc = Service("PackageTracker")

    @svc.handler("getInfo", kind="shared")
    async def get_info(ctx: SharedContext) -> None: ...

    handler = svc.handlers["getInfo"]
    assert (handler.name, handler.kind, handler.method) == ("getInfo", "shared", "PackageTracker/getInfo")
    assert handler.fn is get_info  # the decorator hands back the function itself


def test_handler__retry_policy_defaults_to_the_service_and_can_be_overridden() -> None:
    service_policy, own_policy = RetryPolicy(max_attempts=3), RetryPolicy(max_attempts=1)
    svc = Service("S", retry=service_policy)

    @svc.handler()
    async def Inherits(ctx: ObjectContext) -> None: ...

    @svc.handler(retry=own_policy)
    async def Overrides(ctx: ObjectContext) -> None: ...

    assert svc.handlers["Inherits"].retry is service_policy
    assert svc.handlers["Overrides"].retry is own_policy
    assert Service("T").retry == RetryPolicy()


def test_registry__looks_up_handlers_and_rejects_duplicate_services() -> None:
    svc = Service("S")

    @svc.handler()
    async def H(ctx: ObjectContext) -> None: ...

    registry = Registry([svc])

    assert registry.lookup("S", "H") is svc.handlers["H"]
    assert registry.lookup("S", "Missing") is None
    assert registry.lookup("Missing", "H") is None
    with pytest.raises(ValueError, match=r"^service S registered twice$"):
        registry.add(Service("S"))


def test_retry_policy__backoff_grows_by_factor_and_caps_at_max_interval() -> None:
    policy = RetryPolicy(initial_interval=0.5, factor=2.0, max_interval=3.0)

    assert [policy.backoff(a) for a in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_errors__retriable_flag_and_hierarchy() -> None:
    for terminal in (TerminalError("x"), NonDeterminismError(1, "a", "b"), InvalidInputError("x"), KilledError("x")):
        assert isinstance(terminal, TerminalError) and isinstance(terminal, StreamAppError)
        assert terminal.retriable is False
    retryable = RetryableError("x", retry_after=2.0)
    assert isinstance(retryable, StreamAppError) and retryable.retriable is True
    assert retryable.retry_after == 2.0
    assert RetryableError("x").retry_after is None
    assert not isinstance(Suspended(1.0), Exception)  # a handler's `except Exception` cannot swallow it


def test_errors__non_determinism_names_both_steps() -> None:
    err = NonDeterminismError(2, "run 'a'", "run 'b'")

    assert str(err) == "non-deterministic replay at step 2: journal has run 'a', handler asked for run 'b'"
    assert (err.index, err.journaled, err.requested) == (2, "run 'a'", "run 'b'")
