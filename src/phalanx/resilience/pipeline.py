"""Compose resilience policies in an explicit order.

``Pipeline(bulkhead, breaker, retry, limiter)`` applies like one decorator: the first policy
is the outermost. Read it left to right as the path a call takes::

    bulkhead -> breaker -> retry -> timeout -> your function

That order is a good default for calling a remote dependency: the bulkhead caps the
concurrency this caller spends on it; an open breaker refuses at once, before any retry
work; the retry policy retries each failed attempt, and each attempt is bounded by the
timeout. Putting the timeout outside the retry instead bounds the whole retrying call
(``Retry(total_timeout_s=...)`` already does that cooperatively).

Every Phalanx primitive is a policy: an object whose ``__call__`` decorates ``def`` and
``async def`` functions. Your own decorators work too, if they handle both kinds.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any, Final, ParamSpec, Protocol, TypeVar, cast

__all__ = ["Pipeline", "Policy"]

P = ParamSpec("P")
R = TypeVar("R")

POLICIES_MAX: Final = 16


class Policy(Protocol):
    """Anything that wraps a callable (sync or async) in some protection."""

    def __call__(self, fn: Callable[P, R], /) -> Callable[P, R]: ...


class Pipeline:
    """An ordered stack of policies, outermost first."""

    __slots__ = ("policies",)

    def __init__(self, *policies: Policy) -> None:
        if not policies:
            raise ValueError("policies: a pipeline needs at least one policy")
        if len(policies) > POLICIES_MAX:
            raise ValueError(f"policies: at most {POLICIES_MAX}, got {len(policies)}")
        for policy in policies:
            if not callable(policy):
                raise ValueError(f"policies: {policy!r} cannot wrap a function")
        self.policies: tuple[Policy, ...] = policies

    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]:
        """Wrap ``fn`` in every policy, the first one outermost."""
        wrapped = fn
        for policy in reversed(self.policies):
            wrapped = policy(wrapped)
        return wrapped

    def call(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run ``fn(*args, **kwargs)`` through the pipeline.

        This wraps ``fn`` on every call; decorate once instead on hot paths.
        """
        if inspect.iscoroutinefunction(fn):
            raise TypeError("call: use acall for async functions")
        return self(fn)(*args, **kwargs)

    async def acall(self, fn: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Await ``fn(*args, **kwargs)`` through the pipeline."""
        if not inspect.iscoroutinefunction(fn):
            afn = fn

            async def as_coroutine(*a: Any, **kw: Any) -> Any:
                return await afn(*a, **kw)

            fn = cast(Callable[P, Awaitable[R]], as_coroutine)
        return await self(fn)(*args, **kwargs)

    def statistics(self) -> dict[str, object]:
        """Each policy's statistics, keyed by ``name`` (or type name) in pipeline order."""
        result: dict[str, object] = {}
        for index, policy in enumerate(self.policies):
            label = getattr(policy, "name", None) or type(policy).__name__
            if label in result:
                label = f"{label}#{index}"
            stats = getattr(policy, "statistics", None)
            result[label] = stats() if callable(stats) else None
        return result

    def __repr__(self) -> str:
        return "Pipeline(" + " -> ".join(type(p).__name__ for p in self.policies) + ")"
