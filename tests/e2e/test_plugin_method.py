"""A method is a plug-in: a module outside the package that registers a method with its own setting, loss term and
training hook, named in PSLORA_PLUGINS, runs through `pslora run` on a tiny model with no edit anywhere else: its
setting is validated (a bad value exits 2 naming the key), its term is in the step records, its hook writes into
the task folder, and the next task reads it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import yaml

from conftest import tiny_sequence

ROOT = Path(__file__).resolve().parents[2]

TOY = '''
"""A toy method: an l2 pull of the new factors towards zero (its term), and a file after each task (its hook)."""
import json
from pathlib import Path

from pslora_cli.fields import NUMBER, setting
from pslora_cli.methods.registry import Hooks, Knob, MethodSpec, Term, declare, register, register_term

declare(toy_weight=setting(None, NUMBER + (type(None),), minimum=0, legacy=0.0, help="the toy term's weight"))


def make(inputs):
    seen = inputs.previous[-1].dir / "toy.json" if inputs.previous else None
    inputs.record["toy_saw_previous"] = bool(seen and seen.is_file())

    def loss(layers):
        return sum((layer.lora_A["default"].weight ** 2).sum() for layer in layers.values())

    return loss


class ToyHooks(Hooks):
    def after_training(self, run, folder):
        if folder is not None:
            (Path(folder) / "toy.json").write_text(json.dumps({"task": run.task_id}))
        return {"toy_hook": run.task_id}


register_term(Term("toy", "toy", "toy_weight", make, reads_history=False, default=lambda method: 0.25))
register(MethodSpec("toy-l2", "a toy: l2 on the new factors", terms=(("toy", True),), merge="sum", previous="sum",
                    hooks=ToyHooks(), knobs=(Knob("toy_weight", acts_from=0),)))
'''


def _run(args, tmp_path, plugins="toy_method"):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path / "plugins"), str(ROOT)]),
               PSLORA_PLUGINS=plugins, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "pslora_cli", *map(str, args)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)


def test_a_toy_method_in_its_own_module_runs_through_pslora_run(tiny_bert, tmp_path):
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "toy_method.py").write_text(textwrap.dedent(TOY), encoding="utf-8")
    seq = tiny_sequence(tiny_bert, method={"name": "toy-l2"}, tasks=tiny_sequence(tiny_bert)["tasks"][:2])
    path = tmp_path / "seq.yaml"
    path.write_text(yaml.safe_dump(seq, sort_keys=False))

    bad = _run(["run", path, "--store", tmp_path / "bad", "--set", "method.toy_weight=-1"], tmp_path)
    assert bad.returncode == 2 and "method.toy_weight: must be >= 0" in bad.stderr and not (tmp_path / "bad").exists()

    done = _run(["run", path, "--store", tmp_path / "store", "--json", "--quiet"], tmp_path)
    assert done.returncode == 0, done.stderr
    metas = [json.loads((tmp_path / "store" / "tasks" / t / "meta.json").read_text()) for t in ("t1", "t2")]
    assert [m["config"]["method"]["toy_weight"] for m in metas] == [0.25, 0.25]  # its default, resolved
    assert [m["train"]["toy_hook"] for m in metas] == ["t1", "t2"]
    assert [m["train"]["toy_saw_previous"] for m in metas] == [False, True]  # t2's term read t1's file
    assert all(m["train"]["final"]["toy_loss"] > 0 for m in metas)
    assert (tmp_path / "store" / "tasks" / "t1" / "toy.json").is_file()
    assert json.loads(done.stdout)["merge"]["method"] == "sum"

    missing = _run(["--help"], tmp_path, plugins="no_such_plugin")
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and \
        "PSLORA_PLUGINS: cannot import the plug-in module 'no_such_plugin'" in missing.stderr
