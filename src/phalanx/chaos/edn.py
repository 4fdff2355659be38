"""A reader of the small subset of EDN that Jepsen histories are written in.

Supported: ``nil``, ``true``, ``false``, integers, decimals, strings (with ``\\"``, ``\\\\``,
``\\n``, ``\\t`` escapes), keywords (``:invoke``, returned as :class:`Keyword`), symbols
(returned as :class:`Keyword` too), vectors and lists (returned as Python lists) and maps
(returned as dicts). Commas are whitespace, as in EDN. Nesting is bounded by
:data:`EDN_DEPTH_MAX`; anything else raises :class:`EdnError`.
"""

from __future__ import annotations

from typing import Any, Final

__all__ = ["EDN_DEPTH_MAX", "EdnError", "Keyword", "read_edn"]

#: The deepest nesting of vectors, lists and maps accepted.
EDN_DEPTH_MAX: Final = 32

_DELIMITERS: Final = frozenset(' \t\r\n,()[]{}"')
_ESCAPES: Final = {'"': '"', "\\": "\\", "n": "\n", "t": "\t", "r": "\r"}
_CLOSERS: Final = {"[": "]", "(": ")", "{": "}"}
_CONSTANTS: Final[dict[str, bool | None]] = {"nil": None, "true": True, "false": False}


class EdnError(ValueError):
    """The text is not in the supported EDN subset."""


class Keyword(str):
    """An EDN keyword or symbol, by its name without the colon (``:ok`` is ``Keyword("ok")``)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f":{self!s}"


class _Reader:
    __slots__ = ("pos", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def skip_space(self) -> None:
        text, pos = self.text, self.pos
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        self.pos = pos

    def value(self, depth: int) -> Any:
        self.skip_space()
        if self.pos >= len(self.text):
            raise EdnError("unexpected end of input")
        ch = self.text[self.pos]
        if ch in _CLOSERS:
            if depth >= EDN_DEPTH_MAX:
                raise EdnError(f"nested deeper than EDN_DEPTH_MAX={EDN_DEPTH_MAX}")
            self.pos += 1
            items = self.sequence(_CLOSERS[ch], depth + 1)
            if ch != "{":
                return items
            if len(items) % 2:
                raise EdnError("a map needs an even number of forms")
            return {_hashable(items[i]): items[i + 1] for i in range(0, len(items), 2)}
        if ch == '"':
            return self.string()
        return self.atom()

    def sequence(self, closer: str, depth: int) -> list[Any]:
        items: list[Any] = []
        while True:
            self.skip_space()
            if self.pos >= len(self.text):
                raise EdnError(f"missing {closer!r}")
            if self.text[self.pos] == closer:
                self.pos += 1
                return items
            items.append(self.value(depth))

    def string(self) -> str:
        text = self.text
        pos = self.pos + 1
        out: list[str] = []
        while pos < len(text):
            ch = text[pos]
            if ch == '"':
                self.pos = pos + 1
                return "".join(out)
            if ch == "\\":
                escaped = _ESCAPES.get(text[pos + 1 : pos + 2])
                if escaped is None:
                    raise EdnError(f"unsupported escape at {pos}")
                out.append(escaped)
                pos += 2
                continue
            out.append(ch)
            pos += 1
        raise EdnError("unterminated string")

    def atom(self) -> Any:
        text = self.text
        start = pos = self.pos
        while pos < len(text) and text[pos] not in _DELIMITERS:
            pos += 1
        self.pos = pos
        token = text[start:pos]
        if not token:
            raise EdnError(f"unexpected {text[start]!r} at {start}")
        if token in _CONSTANTS:
            return _CONSTANTS[token]
        if token.startswith(":"):
            return Keyword(token[1:])
        try:
            return int(token)
        except ValueError:
            pass
        try:
            return float(token)
        except ValueError:
            return Keyword(token)


def _hashable(key: Any) -> Any:
    if isinstance(key, list):
        return tuple(_hashable(k) for k in key)
    if isinstance(key, dict):
        raise EdnError("a map cannot be a map key here")
    return key


def read_edn(text: str) -> Any:
    """The one EDN value in ``text`` (surrounding whitespace allowed)."""
    reader = _Reader(text)
    value = reader.value(0)
    reader.skip_space()
    if reader.pos != len(text):
        raise EdnError(f"trailing text at {reader.pos}")
    return value
