"""One decorator shape for every primitive: the same object wraps ``def`` and ``async def``.

A primitive supplies ``call(fn, *args, **kwargs)`` and ``acall(fn, *args, **kwargs)``;
:func:`decorate` returns a wrapper of the right kind for ``fn`` that routes through them.
Primitives with a hand-tuned sync fast path use :func:`decorate_async` for the async half.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar, cast

__all__ = ["decorate", "decorate_async"]

P = ParamSpec("P")
R = TypeVar("R")

Call = Callable[..., Any]
ACall = Callable[..., Awaitable[Any]]


def decorate_async(fn: Callable[..., Any], acall: ACall) -> Callable[..., Any]:
    """Wrap coroutine function ``fn`` so each call awaits ``acall(fn, ...)``."""

    @functools.wraps(fn)
    async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
        return await acall(fn, *args, **kwargs)

    return async_wrapper


def decorate(fn: Callable[P, R], call: Call, acall: ACall) -> Callable[P, R]:
    """Wrap ``fn`` so each call goes through ``call`` (sync) or ``acall`` (async)."""
    if inspect.iscoroutinefunction(fn):
        return cast(Callable[P, R], decorate_async(fn, acall))

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        return call(fn, *args, **kwargs)  # type: ignore[no-any-return]

    return wrapper
