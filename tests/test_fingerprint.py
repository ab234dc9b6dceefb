"""The upper floors compute what they computed when tests/fingerprint.json was recorded.

Models in their presets and variants (state_dicts and outputs), a short `magnn train`
(metrics.json) and a short `magnn study` (report.json), timings left out. A refactor that
changes any of them fails here, naming what changed; a deliberate change re-records it with
`python -m tests.fingerprint --write` and says why in its commit.
"""
import json

import pytest

from fingerprint import RECORD, differences, fingerprint


@pytest.mark.slow
def test_fingerprint_unchanged():
    expected = json.loads(RECORD.read_text())
    actual = json.loads(json.dumps(fingerprint()))
    lines = differences(expected, actual)
    assert not lines, "\n".join(lines[:40])


def test_differences_sees_a_changed_value():
    record = {"a": {"b": [1.0, 2, "x"]}, "c": "d"}
    assert differences(record, record) == []
    assert differences(record, {"a": {"b": [1.0 + 1e-9, 2, "x"]}, "c": "d"}) == []
    assert differences(record, {"a": {"b": [1.001, 2, "x"]}, "c": "d"}) == ["/a/b[0]: 1.0 -> 1.001"]
    assert differences(record, {"a": {"b": [1.0, 2]}, "c": "d"}) == ["/a/b: length 3 -> 2"]
    assert differences(record, {"a": {"b": [1.0, 2, "x"]}}) == ["/c: missing"]
