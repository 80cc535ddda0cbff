"""docs/fleet-api.md documents the whole ``fleet.yml`` schema (issue 14, done-when): every key a push
accepts has its row in the schema table and its line in the example."""

from __future__ import annotations

import re
from pathlib import Path

from picofleet.fleet import manifest

DOC = Path(__file__).parent.parent / "docs" / "fleet-api.md"


def schema_section() -> str:
    text = DOC.read_text()
    start = text.index("### `fleet.yml`")
    return text[start : text.index("\n## ", start)]


def test_every_key_a_push_accepts_is_in_the_schema_table_and_the_example() -> None:
    section = schema_section()
    first_cells = re.findall(r"^\| ([^|]*`[^|]*) \|", section, re.MULTILINE)
    documented = {name.rpartition(".")[2] for cell in first_cells for name in re.findall(r"`([^`]+)`", cell)}
    accepted = set(manifest._TOP_KEYS) | set(manifest._BOARD_KEYS)
    assert accepted <= documented, f"fleet.yml keys without a row: {sorted(accepted - documented)}"
    example = section[section.index("```yaml") : section.index("```", section.index("```yaml") + 7)]
    for key in accepted:
        assert re.search(rf"^\s*{key}:", example, re.MULTILINE), f"{key} is not in the example"
