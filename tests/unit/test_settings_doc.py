"""docs/settings.md's table is generated from the declarations (config/docs.py): it fails when they drift, and
every setting has its help text."""

import dataclasses
from pathlib import Path

from conftest import generated_block
from pslora_cli.config.docs import BEGIN, END, readme_block
from pslora_cli.config.schema import SECTIONS, Sequence, Task

README = Path(__file__).resolve().parents[2] / "docs" / "settings.md"


def test_the_readme_settings_table_is_the_generated_one():
    assert generated_block(README, BEGIN, END) == readme_block(), \
        "run: python -m pslora_cli.config.docs, and paste it into docs/settings.md"


def test_every_setting_has_help_text():
    for cls in (Sequence, Task, *SECTIONS.values()):
        for f in dataclasses.fields(cls):
            if "types" in f.metadata:
                assert f.metadata["help"].strip(), f"{cls.__name__}.{f.name} has no help text"
