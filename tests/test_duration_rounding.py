"""report.tables.duration rounds once, to the unit it shows, and then splits: the remainder rounded after the split
made a budget stop at 179.6 s say "2 min 60 s"."""

from __future__ import annotations

import pytest

from fewshot.report.tables import duration


@pytest.mark.parametrize("seconds, said", [
    (59.94, "59.9 s"),
    (59.96, "1 min 00 s"),  # was "60.0 s"
    (60, "1 min 00 s"),
    (119.4, "1 min 59 s"),
    (119.6, "2 min 00 s"),  # was "1 min 60 s"
    (179.6, "3 min 00 s"),  # was "2 min 60 s"
    (3599.4, "59 min 59 s"),
    (3599.6, "1 h 00 min"),  # was "59 min 60 s"
    (7169.9, "1 h 59 min"),
    (7199.9, "2 h 00 min"),  # was "1 h 60 min"
    (0.6, "0.6 s"),
])
def test_a_duration_never_shows_60_of_a_unit(seconds, said):
    assert duration(seconds) == said
