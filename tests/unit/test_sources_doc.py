"""docs/sequences.md's list of data sources is generated from the source records (data/sources.py): it fails when
they drift, and every record has its summary, keys and loader."""

from pathlib import Path

from conftest import generated_block
from pslora_cli.data import SOURCES
from pslora_cli.data.sources import BEGIN, END, sources_block

DOC = Path(__file__).resolve().parents[2] / "docs" / "sequences.md"


def test_the_documented_list_of_sources_is_the_generated_one():
    assert generated_block(DOC, BEGIN, END) == sources_block(), \
        "run: python -m pslora_cli.data, and paste it into docs/sequences.md"


def test_every_source_is_one_whole_record():
    assert {"wordnet", "files", "cl-benchmark", "mnist", "image_folder"} <= set(SOURCES)
    for name, source in SOURCES.items():
        assert source.name == name and source.summary.strip() and source.fields and callable(source.load)
        assert source.modality in ("text", "image")
        assert set(source.choices) <= set(source.fields)
