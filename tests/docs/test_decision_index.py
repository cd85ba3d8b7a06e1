"""docs/decisions/README.md indexes every decision record, and a record that supersedes
another is named as such on both sides."""

from __future__ import annotations

import re
from pathlib import Path

DECISIONS = Path(__file__).resolve().parents[2] / "docs" / "decisions"


def test_every_record_is_indexed_and_supersessions_are_mutual():
    index = (DECISIONS / "README.md").read_text()
    records = sorted(p for p in DECISIONS.glob("[0-9][0-9][0-9][0-9]-*.md"))
    assert records
    for record in records:
        assert f"]({record.name})" in index, f"{record.name} is missing from docs/decisions/README.md"
    numbers = {r.name[:4]: r for r in records}
    assert len(numbers) == len(records), "two decision records share a number: " + ", ".join(
        r.name for r in records if [q.name[:4] for q in records].count(r.name[:4]) > 1)
    for record in records:
        status = record.read_text().split("\n\n", 2)[1]
        for earlier in re.findall(r"[Ss]upersedes[^.]*?decision (\d{4})", status):
            assert earlier in numbers, f"{record.name} supersedes a record that does not exist: {earlier}"
            assert f"superseded in part by [{record.name[:4]}]" in numbers[earlier].read_text().lower() or \
                f"superseded by [{record.name[:4]}]" in numbers[earlier].read_text().lower(), \
                f"{numbers[earlier].name} does not say it is superseded by {record.name}"
