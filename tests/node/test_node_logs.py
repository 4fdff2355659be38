"""Structured logs: the fields of each line, in JSON and text, and the level filter."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from phalanx.node.logs import (
    EXTRA_CHARS_MAX,
    LOG_FORMATS,
    LOG_LEVELS,
    MSG_CHARS_MAX,
    configure_logging,
)


@pytest.fixture
def restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


@pytest.mark.usefixtures("restore_root")
def test_json_lines_carry_the_standard_fields_and_extras() -> None:
    stream = io.StringIO()
    configure_logging(7, log_format="json", level="info", stream=stream)
    logging.getLogger("phalanx.node.driver").info(
        "applied %d entries", 3, extra={"term": 4, "peer": ("127.0.0.1", 7001), "ok": True}
    )
    [line] = lines(stream)
    record = json.loads(line)
    assert record["level"] == "info"
    assert record["logger"] == "phalanx.node.driver"
    assert record["node_id"] == 7
    assert record["msg"] == "applied 3 entries"
    assert record["term"] == 4
    assert record["ok"] is True
    assert record["peer"] == "('127.0.0.1', 7001)"  # not JSON: written as its text
    assert record["ts"].endswith("Z")
    assert record["ts"][10] == "T"
    assert "exc" not in record


@pytest.mark.usefixtures("restore_root")
def test_json_carries_the_traceback_and_an_extra_cannot_hide_a_field() -> None:
    stream = io.StringIO()
    configure_logging(1, log_format="json", stream=stream)
    try:
        raise ValueError("disk on fire")
    except ValueError:
        logging.getLogger("x").exception("save failed", extra={"level_hint": "x"})
    record = json.loads(lines(stream)[0])
    assert record["level"] == "error"
    assert "ValueError: disk on fire" in record["exc"]
    assert record["level_hint"] == "x"


@pytest.mark.usefixtures("restore_root")
def test_text_is_one_readable_line_with_the_node_and_extras() -> None:
    stream = io.StringIO()
    configure_logging(2, stream=stream)
    logging.getLogger("phalanx.net").warning("peer %d unreachable", 3, extra={"attempt": 5})
    [line] = lines(stream)
    assert " WARNING " in line
    assert "phalanx.net [node 2] peer 3 unreachable attempt=5" in line


@pytest.mark.usefixtures("restore_root")
def test_level_filters_and_a_second_call_replaces_the_handler() -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging(1, stream=first, level="info")
    configure_logging(1, stream=second, level="warning", log_format="json")
    log = logging.getLogger("phalanx.test")
    log.info("hidden")
    log.warning("shown")
    assert lines(first) == []
    assert [json.loads(line)["msg"] for line in lines(second)] == ["shown"]
    configure_logging(1, stream=second, level="debug", log_format="json")
    log.debug("now shown")
    assert json.loads(lines(second)[-1])["msg"] == "now shown"


@pytest.mark.usefixtures("restore_root")
def test_long_messages_and_extras_are_cut_at_their_limits() -> None:
    stream = io.StringIO()
    configure_logging(1, log_format="json", stream=stream)
    logging.getLogger("x").info("m" * (MSG_CHARS_MAX + 10), extra={"blob": "b" * 5000})
    record = json.loads(lines(stream)[0])
    assert len(record["msg"]) == MSG_CHARS_MAX
    assert record["msg"].endswith("...")
    assert len(record["blob"]) == EXTRA_CHARS_MAX


@pytest.mark.parametrize(
    ("field", "kwargs"), [("log_format", {"log_format": "xml"}), ("level", {"level": "loud"})]
)
def test_bad_settings_name_the_field(field: str, kwargs: dict[str, str]) -> None:
    with pytest.raises(ValueError, match=field):
        configure_logging(1, **kwargs)


def test_the_cli_offers_the_formats_and_levels_the_module_knows() -> None:
    from phalanx.cli import node as cli_node

    assert cli_node._LOG_FORMATS == LOG_FORMATS
    assert cli_node._LOG_LEVELS == LOG_LEVELS
