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
        "(reference 83.3; tries 53.3, 60.0, 81.7)"]


def test_the_summary_prints_them(capsys):
    doc = {"sequence": "gen-demo", "seeds": [0], "orders": 1, "summary": {}, "paired": {}, "runs": [RUN]}
    print_summary(Reporter(), doc)
    assert "animal stability_weight=0.1 (reference 83.3; tries 53.3, 60.0, 81.7)" in capsys.readouterr().out
