"""The settings table of docs/operations.md names every setting: operators never read the code."""

from __future__ import annotations

from pathlib import Path

from pipeline.settings import Settings

README = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


def test_every_setting_is_in_the_operations_settings_table() -> None:
    table = [line for line in README.read_text().splitlines() if line.startswith("| `PIPELINE_")]
    documented = " ".join(table)
    missing = [f"PIPELINE_{n.upper()}" for n in Settings.model_fields]
    missing = [env for env in missing if f"`{env}`" not in documented]
    assert not missing, f"settings missing from the table of docs/operations.md: {missing}"
