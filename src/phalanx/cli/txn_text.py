"""The text form of a transaction read by ``phalanx kv txn``.

Three sections separated by blank lines, as in etcdctl's interactive ``txn``: the compares,
the operations run when every compare holds, and the operations run otherwise. A run of blank
lines ends one section, so a text that starts with a blank line has no compares; trailing
sections may be left out. Lines starting with ``#`` are comments (they end no section)::

    # compares: TARGET("KEY") OP OPERAND, OP one of = != < >
    value("config/mode") = "blue"
    version("config/lock") = 0
    mod("config/mode") < 42

    # then
    put config/mode green
    del config/lock
    get config/ --prefix

    # else
    get config/mode

Targets are ``value`` (the operand a string), ``version``, ``mod`` (mod revision) and
``create`` (create revision), whose operands are integers. Operations are ``put KEY VALUE``,
``del KEY [--prefix]`` and ``get KEY [--prefix] [--limit N]``; words are split as a shell
does, so quote values holding spaces. With ``hex=True`` keys and values are written in hex.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from phalanx.kv.commands import (
    Compare,
    CompareOp,
    CompareTarget,
    DeleteRange,
    Put,
    Range,
    TxnOp,
    prefix_end,
)

__all__ = ["TXN_LINES_MAX", "TxnText", "TxnTextError", "parse_txn"]

#: Longest transaction text, in lines (the state machine's own limit is 128 operations).
TXN_LINES_MAX: Final = 1000

_COMPARE: Final = re.compile(
    r"""^\s*(?P<target>value|version|mod|create)\s*\(\s*(?P<key>"(?:[^"\\]|\\.)*"|'[^']*'|[^)\s]+)\s*\)"""
    r"""\s*(?P<op>!=|=|<|>)\s*(?P<operand>.+?)\s*$"""
)
_TARGETS: Final = {
    "value": CompareTarget.VALUE,
    "version": CompareTarget.VERSION,
    "mod": CompareTarget.MOD_REVISION,
    "create": CompareTarget.CREATE_REVISION,
}
_OPS: Final = {
    "=": CompareOp.EQUAL,
    "!=": CompareOp.NOT_EQUAL,
    "<": CompareOp.LESS,
    ">": CompareOp.GREATER,
}


class TxnTextError(ValueError):
    """The text is not a transaction; the message names the line."""


@dataclass(frozen=True, slots=True)
class TxnText:
    compare: tuple[Compare, ...]
    success: tuple[TxnOp, ...]
    failure: tuple[TxnOp, ...]


def parse_txn(text: str, *, hex_mode: bool = False) -> TxnText:
    """``text`` as compares, success and failure operations; ``TxnTextError`` when malformed."""
    lines = text.splitlines()
    if len(lines) > TXN_LINES_MAX:
        raise TxnTextError(f"a transaction has at most {TXN_LINES_MAX} lines, got {len(lines)}")
    encode = bytes.fromhex if hex_mode else str.encode
    sections: list[list[tuple[int, str]]] = [[]]
    previous_blank = False
    for number, line in enumerate(lines, start=1):
        stripped = line.strip()
        if stripped.startswith("#"):
            continue
        if not stripped:
            if not previous_blank:  # a run of blank lines ends one section
                sections.append([])
            previous_blank = True
            continue
        previous_blank = False
        sections[-1].append((number, stripped))
    while len(sections) > 1 and not sections[-1]:
        sections.pop()  # blank lines at the end
    if len(sections) > 3:
        first_extra = sections[3][0][0]
        raise TxnTextError(f"line {first_extra}: a fourth section (expected compares, then, else)")
    while len(sections) < 3:
        sections.append([])
    return TxnText(
        tuple(_compare(n, line, encode) for n, line in sections[0]),
        tuple(_op(n, line, encode) for n, line in sections[1]),
        tuple(_op(n, line, encode) for n, line in sections[2]),
    )


def _words(number: int, line: str) -> list[str]:
    try:
        return shlex.split(line)
    except ValueError as exc:
        raise TxnTextError(f"line {number}: {exc}") from None


def _compare(number: int, line: str, encode: Callable[[str], bytes]) -> Compare:
    match = _COMPARE.match(line)
    if match is None:
        raise TxnTextError(
            f'line {number}: {line!r} is not a compare like value("key") = "v" '
            "(targets value, version, mod, create; ops = != < >)"
        )
    (key,) = _words(number, match["key"]) or [""]
    operand_words = _words(number, match["operand"])
    if len(operand_words) != 1:
        raise TxnTextError(f"line {number}: one operand expected, got {match['operand']!r}")
    target = _TARGETS[match["target"]]
    operand: int | bytes
    try:
        if target == CompareTarget.VALUE:
            operand = encode(operand_words[0])
        else:
            operand = int(operand_words[0])
        encoded_key = encode(key)
    except ValueError as exc:
        raise TxnTextError(f"line {number}: {exc}") from None
    return Compare(encoded_key, target, _OPS[match["op"]], operand)


def _op(number: int, line: str, encode: Callable[[str], bytes]) -> TxnOp:
    words = _words(number, line)
    verb, args = words[0].lower(), words[1:]
    flags = [a for a in args if a.startswith("--")]
    plain = [a for a in args if not a.startswith("--")]
    try:
        if verb == "put" and len(plain) == 2 and not flags:
            return Put(encode(plain[0]), encode(plain[1]))
        if verb in {"del", "delete"} and len(plain) == 1 and set(flags) <= {"--prefix"}:
            key = encode(plain[0])
            return DeleteRange(key, prefix_end(key) if flags else b"")
        if verb == "get":
            return _get(args, encode)
    except ValueError as exc:
        raise TxnTextError(f"line {number}: {exc}") from None
    raise TxnTextError(
        f"line {number}: {line!r} is not an operation (put KEY VALUE, del KEY [--prefix], "
        "get KEY [--prefix] [--limit N])"
    )


def _get(args: list[str], encode: Callable[[str], bytes]) -> Range:
    key: str | None = None
    prefix = False
    limit = 0
    words = iter(args)
    for word in words:
        if word == "--prefix":
            prefix = True
        elif word == "--limit":
            limit = int(next(words, "missing"))
        elif key is None and not word.startswith("--"):
            key = word
        else:
            raise ValueError(f"unexpected {word!r}")
    if key is None:
        raise ValueError("get: KEY is missing")
    encoded = encode(key)
    return Range(encoded, prefix_end(encoded) if prefix else b"", 0, limit)
