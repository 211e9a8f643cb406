"""`python -m pslora_cli.data`: docs/sequences.md's list of data sources, generated from their records."""

from pslora_cli.data.sources import sources_block

print(sources_block())
