import math

import pytest

from phalanx.resilience.config import (
    parse_count,
    parse_duration_s,
    parse_ratio,
    require_non_negative,
    require_positive,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30.0), ("250ms", 0.25), ("2m", 120.0), ("1h", 3600.0), ("500us", 0.0005), (5, 5.0)],
)
def test_durations(text: str | float, seconds: float) -> None:
    assert math.isclose(parse_duration_s("timeout", text), seconds)


@pytest.mark.parametrize("text", ["30", "s", "-3s", "3 sec", "", "1e3s", "thirty seconds"])
def test_malformed_durations_name_the_field(text: str) -> None:
    with pytest.raises(ValueError, match="timeout"):
        parse_duration_s("timeout", text)


def test_zero_duration_only_when_allowed() -> None:
    with pytest.raises(ValueError, match="> 0"):
        parse_duration_s("timeout", 0)
    assert parse_duration_s("timeout", "0s", allow_zero=True) == 0.0


@pytest.mark.parametrize(
    ("text", "ratio"), [("50%", 0.5), ("0%", 0.0), ("100%", 1.0), (0.25, 0.25)]
)
def test_ratios(text: str | float, ratio: float) -> None:
    assert parse_ratio("error_threshold", text) == ratio


@pytest.mark.parametrize("text", ["150%", "50", "%", 1.5, -0.1, "fifty%"])
def test_bad_ratios(text: str | float) -> None:
    with pytest.raises(ValueError, match="error_threshold"):
        parse_ratio("error_threshold", text)


def test_numbers() -> None:
    assert require_positive("x", 3) == 3.0
    assert require_non_negative("x", 0) == 0.0
    for bad in (float("nan"), float("inf"), -1, True, "3"):
        with pytest.raises(ValueError, match="x"):
            require_positive("x", bad)  # type: ignore[arg-type]
    assert require_positive("x", float("inf"), allow_inf=True) == float("inf")


def test_counts() -> None:
    assert parse_count("n", 3) == 3
    assert parse_count("n", "10") == 10
    for bad in (0, -1, "x", True, 2.5):
        with pytest.raises(ValueError, match="n"):
            parse_count("n", bad)  # type: ignore[arg-type]


def test_duration_maximum() -> None:
    assert parse_duration_s("t", "1h", maximum_s=3600) == 3600.0
    with pytest.raises(ValueError, match="at most"):
        parse_duration_s("t", "61m", maximum_s=3600)
