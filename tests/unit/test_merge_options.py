"""Merges declare typed options with defaults (core/merges: MergeOption), resolved in one place for every caller
(merge_options.resolve_options) with one error message; the accuracy matrix's row keys come from the resolved
options, so an option a merge takes re-scores its stages and one it does not take changes nothing."""

from __future__ import annotations

import dataclasses

import pytest

from conftest import unit_sequence
from pslora_cli.core.merges import MERGE_SCALE_DEFAULTS, MERGES
from pslora_cli.errors import InputError
from pslora_cli.merge_options import check_merge_name, resolve_options


def test_every_option_is_declared_with_a_valid_default():
    for merge in MERGES.values():
        for option in merge.parameters:
            assert option.valid(option.default) and option.help, (merge.name, option.name)
    assert MERGE_SCALE_DEFAULTS == {"task-arithmetic": 1.0, "magmax": 0.5}


def test_resolution_fills_defaults_and_keeps_only_the_declared_options():
    assert resolve_options("magmax") == {"scale": 0.5}
    assert resolve_options("ties", {"density": 0.3, "scale": 2}) == {"density": 0.3}
    assert resolve_options("magnitude", {"density": 0.3}) == {}


@pytest.mark.parametrize("merge, given, keys, message", [
    ("ties", {"density": 7}, {"density": "--density"},
     "--density 7: the fraction of each update TIES keeps; give a number in (0, 1]"),
    ("ties", {"density": 0.0}, None, "method.merge_density 0.0: the fraction of each update TIES keeps"),
    ("magmax", {"scale": float("inf")}, None, "method.merge_scale inf: the merged update's scale; give a finite"),
    ("ties", {"scale": float("nan")}, {"scale": "--scale"}, "--scale nan"),  # another merge's option: still checked
])
def test_one_message_for_an_option_out_of_range(merge, given, keys, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace("]", r"\]").replace("+", r"\+")):
        resolve_options(merge, given, keys)


def test_one_message_for_an_unknown_merge():
    with pytest.raises(InputError, match=r"--merge 'nope': expected one of magnitude, sum"):
        check_merge_name("nope", "--merge")


class FakeStore:
    def adapter_sha256(self, task_id):
        return f"sha-{task_id}"

    def head_sha256(self, task_id):
        return None

    def task_meta(self, task_id):
        return {"data_fingerprint": "fp"}

    def has_task(self, task_id):
        return True


def test_the_matrix_row_keys_follow_the_resolved_options(word_bert):
    from pslora_cli.evaluation.matrix import matrix_keys

    def rows(merge, **method):
        seq = unit_sequence(word_bert, n_tasks=2, method={"name": "custom", "merge": merge, **method})
        return matrix_keys(seq, FakeStore(), 2)[0]

    assert rows("ties") != rows("ties", merge_density=0.5)  # ties takes density: its stages are other stages
    assert rows("magnitude") == rows("magnitude", previous="sum")  # nothing of the merge changed
    seq = unit_sequence(word_bert, n_tasks=2, method={"name": "custom", "merge": "magnitude"})
    undeclared = seq.replace(method=dataclasses.replace(seq.method, merge_density=0.5))
    from pslora_cli.evaluation.matrix import matrix_keys

    assert matrix_keys(seq, FakeStore(), 2)[0] == matrix_keys(undeclared, FakeStore(), 2)[0]
