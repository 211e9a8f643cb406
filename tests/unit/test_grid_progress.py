"""A compare grid a user can watch: each run's log fills as it goes (the child is not --quiet) and the watcher
turns its last lines into task i/T, step and an ETA."""

from __future__ import annotations

from pslora_cli.commands import grid


def test_progress_line_reads_the_task_the_step_and_an_eta(tmp_path):
    log = tmp_path / "run.log"
    assert grid.run_progress(log, 5) == "no log yet"
    log.write_text("created store x for sequence 'gen-demo' (3 tasks)\n")
    assert grid.run_progress(log, 5).startswith("starting")
    log.write_text("training task sentiment (1/3): 2 classes\ntask sentiment: step 30/30 loss 0.1 acc 1.00 "
                   "0.5 step/s\ntraining task animal (2/3): 2 classes\n"
                   "task animal: step 10/30 loss 0.4700 acc 0.75 0.5 step/s\n")
    line = grid.run_progress(log, 600)
    # 20 steps of this task and 30 of the last one at 0.5 step/s: 100 s
    assert line.startswith("task 2/3 (animal), step 10/30, ETA ~2 min of training"), line
    assert "10 min so far" in line


def test_grid_children_are_not_quiet(tmp_path, monkeypatch):
    """Their progress is what fills the logs: a --quiet child leaves them empty for minutes."""
    from types import SimpleNamespace

    from pslora_cli.session import Session

    started = []

    class Done:
        returncode = 0

        def __init__(self, argv, **kwargs):
            started.append(argv)

        def poll(self):
            return 0

    monkeypatch.setattr(grid.subprocess, "Popen", Done)
    run = SimpleNamespace(file=tmp_path / "s.yaml", store=tmp_path / "st", seed=0, method="inc-lora",
                          data_dir=tmp_path, order=1)
    grid.run_parallel([run], Session(store_path=tmp_path, device_name="cpu", quiet=True), 1, tmp_path)
    assert len(started) == 1 and "--quiet" not in started[0] and "run" in started[0]


def test_progress_line_names_the_selection_try_and_calls_its_eta_a_least(tmp_path):
    """Under a selection protocol a task trains several times; a line that only says "step 30/30" over and over, with
    an ETA that ignores the tries to come, reads as a hung run."""
    log = tmp_path / "run.log"
    log.write_text("training task sentiment (1/3): 2 classes\ntask sentiment: step 30/30 loss 0.1 acc 1.00 "
                   "0.5 step/s\ntask animal: selection (stability-decay) reference: stability_weight=0\n"
                   "training task animal (2/3): 2 classes\ntask animal: step 30/30 loss 0.2 acc 0.9 0.5 step/s\n"
                   "task animal: reference (knobs off) validation accuracy 83.3; accepting >= 79.2\n"
                   "task animal: selection (stability-decay) try-1: stability_weight=1\n"
                   "training task animal (2/3): 2 classes\ntask animal: step 10/30 loss 0.47 acc 0.75 0.5 step/s\n")
    line = grid.run_progress(log, 600)
    assert line.startswith("task 2/3 (animal, try-1: stability_weight=1), step 10/30, ETA ≥ ~2 min"), line
    log.write_text(log.read_text() + "task animal: selection (stability-decay) chose stability_weight=1\n"
                   "training task food (3/3): 2 classes\ntask food: step 5/30 loss 0.5 acc 0.7 0.5 step/s\n")
    assert grid.run_progress(log, 600).startswith("task 3/3 (food), step 5/30, ETA ~1 min"), grid.run_progress(log, 600)


def test_progress_line_reads_first_tasks_tries_and_drops_a_finished_or_stale_try(tmp_path):
    log = tmp_path / "run.log"
    log.write_text("selection (first-tasks) try-0: stability_weight=10\ntraining task sentiment (1/4): 2 classes\n"
                   "task sentiment: step 50/100 loss 0.3 acc 0.8 0.5 step/s\n")
    assert grid.run_progress(log, 60).startswith("task 1/4 (sentiment, try-0: stability_weight=10), step 50/100, ETA ≥")
    # the next try came from the task cache: no step line of its own yet, so none of the last try's
    log.write_text(log.read_text() + "selection (first-tasks) try-1: stability_weight=1\n"
                   "training task sentiment (1/4): 2 classes\n")
    assert grid.run_progress(log, 60) == "task 1/4 (sentiment, try-1: stability_weight=1) (1 min so far)"
    log.write_text(log.read_text() + "task sentiment: step 100/100 loss 0.2 acc 0.9 0.5 step/s\n"
                   "task animal: selection (first-tasks) chose stability_weight=1\n"
                   "training task animal (2/4): 2 classes\ntask animal: step 10/100 loss 0.5 acc 0.7 0.5 step/s\n")
    assert grid.run_progress(log, 60).startswith("task 2/4 (animal), step 10/100, ETA ~"), grid.run_progress(log, 60)
