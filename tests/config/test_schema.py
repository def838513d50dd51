"""The settings' table stays true to docs/settings.md: every setting, its real default, the ignored ones."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from pooler.config import (
    PGBOUNCER_IGNORED_SETTINGS,
    PGBOUNCER_UNSUPPORTED_SETTINGS,
    Config,
    Settings,
    replace_settings,
)

REPO = Path(__file__).resolve().parents[2]


def test_settings_doc_lists_every_setting_with_its_real_default() -> None:
    doc = (REPO / "docs" / "settings.md").read_text()
    section = doc.split("## [pgbouncer] section", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(\w+)` \| `([^`]*)` \|", section, flags=re.MULTILINE)
    names = [name for name, _ in rows]
    assert sorted(names) == sorted(f.name for f in dataclasses.fields(Settings))
    defaults = {name: "" if text == '""' else text for name, text in rows}
    # The documented default, read as a config value, must give back the real default.
    assert replace_settings(Config(), **defaults).settings == Settings()


def test_settings_doc_lists_exactly_the_ignored_pgbouncer_settings() -> None:
    doc = (REPO / "docs" / "settings.md").read_text()
    section = doc.split("### Ignored PgBouncer settings", 1)[1].split("\n## ", 1)[0]
    rows = dict(re.findall(r"^\| `(\w+)` \| (.+) \|$", section, flags=re.MULTILINE))
    assert set(rows) == PGBOUNCER_UNSUPPORTED_SETTINGS
    for name, why in rows.items():  # each says why, in the words the admin console's SET answers with
        assert why.rstrip(".").lower() == PGBOUNCER_IGNORED_SETTINGS[name].lower(), name
