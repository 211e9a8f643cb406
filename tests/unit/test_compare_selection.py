"""compare's summary says what a selection protocol chose in each run (the value per task and the validation
accuracy of the reference and of each try), not only the ACC that the choice produced."""

from __future__ import annotations

from pslora_cli.commands.compare import print_summary, selection_lines
from pslora_cli.report import Reporter

RUN = {"method": "ps-lora", "seed": 0, "order": 1, "selection": {
    "sentiment": {"protocol": "stability-decay", "values": None, "note": "no knob acts on this task"},
    "animal": {"protocol": "stability-decay", "values": {"stability_weight": 0.1}, "reference": 0.8333,
               "attempts": [{"values": {"stability_weight": 10.0}, "accuracy": 0.5333},
                            {"values": {"stability_weight": 1.0}, "accuracy": 0.6},
                            {"values": {"stability_weight": 0.1}, "accuracy": 0.8167}]}}}


def test_the_chosen_values_and_tries_are_one_line_per_run():
    fixed = {"method": "inc-lora", "seed": 0, "order": 1, "selection": None}
    assert selection_lines([RUN, fixed]) == [
        "ps-lora seed 0 order 1, chosen on validation by stability-decay: animal stability_weight=0.1 "
        "(reference 83.3; tries 10: 53.3, 1: 60.0, 0.1: 81.7)"]


def test_the_summary_prints_them(capsys):
    doc = {"sequence": "gen-demo", "seeds": [0], "orders": 1, "summary": {}, "paired": {}, "runs": [RUN]}
    print_summary(Reporter(), doc)
    assert "animal stability_weight=0.1 (reference 83.3; tries 10: 53.3, 1: 60.0, 0.1: 81.7)" in capsys.readouterr().out


def test_first_tasks_merge_scale_and_a_failed_tolerance_are_shown_once_each():
    first = {"protocol": "first-tasks", "values": {"stability_weight": 1.0}, "first_tasks": 2,
             "attempts": [{"values": {"stability_weight": 10.0}, "accuracy": 0.7},
                          {"values": {"stability_weight": 1.0}, "accuracy": 0.8}]}
    later = {"protocol": "first-tasks", "values": {"stability_weight": 1.0}, "note": "chosen on the first 2 task(s)"}
    run = {"method": "ps-lora", "seed": 1, "order": 2, "selection": {"a": first, "b": dict(first), "c": later}}
    assert selection_lines([run]) == ["ps-lora seed 1 order 2, chosen on validation by first-tasks: the first 2 "
                                      "tasks stability_weight=1 (tries 10: 70.0, 1: 80.0)"]
    merge = {"protocol": "stability-decay", "merge": {"values": {"merge_scale": 0.67}, "attempts": [
        {"values": {"merge_scale": 1.0}, "accuracy": 0.5}, {"values": {"merge_scale": 0.67}, "accuracy": 0.6}]}}
    failed = {"protocol": "stability-decay", "values": {"stability_weight": 0.1}, "reference": 0.93,
              "accepted": False, "attempts": [{"values": {"stability_weight": 0.1}, "accuracy": 0.88}]}
    run = {"method": "m", "seed": 0, "order": 1, "selection": {"t1": merge, "t2": failed}}
    assert selection_lines([run]) == ["m seed 0 order 1, chosen on validation by stability-decay: the merge at t1 "
                                      "merge_scale=0.67 (tries 1: 50.0, 0.67: 60.0); t2 stability_weight=0.1 "
                                      "(reference 93.0; tries 0.1: 88.0; none within the tolerance: the last kept)"]
