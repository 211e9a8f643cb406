"""Imported once by the kill test's forkserver: what every forked `pslora` run would otherwise redo (the
heavy imports, parsing WordNet's data.noun) is done here and inherited by each fork."""

import matplotlib  # noqa: F401
import peft  # noqa: F401
import torch  # noqa: F401
import transformers  # noqa: F401

from pslora_cli import cli, session  # noqa: F401
from pslora_cli.commands import merge, run  # noqa: F401
from pslora_cli.data.text_sources import DEFAULT_WORDNET_DIR, wordnet_pools
from pslora_cli.evaluation import matrix, scoring  # noqa: F401
from pslora_cli.training import recipe, task  # noqa: F401

wordnet_pools(DEFAULT_WORDNET_DIR / "data.noun")

torch.set_num_threads(1)  # many short runs on a shared machine: one thread each avoids oversubscription
