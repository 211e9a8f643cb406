"""The ACC-vs-BWT figure's labels: methods whose points nearly coincide get labels that do not overlap."""

import importlib.util
from pathlib import Path

import pytest

matplotlib = pytest.importorskip("matplotlib")
SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "acc_bwt_plot.py"


def load_script():
    spec = importlib.util.spec_from_file_location("acc_bwt_plot", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_labels_of_coinciding_points_do_not_overlap():
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plot = load_script()
    summary = {name: {"n": 3, "acc": 90.6 + 0.05 * i, "bwt": -1.5 + 0.1 * i} for i, name in
               enumerate(["multitask", "per-task", "ps-lora"])}
    fig, ax = plt.subplots()
    ax.set_xlim(-50, 5)
    ax.set_ylim(50, 100)
    for s in summary.values():
        ax.plot([s["bwt"]], [s["acc"]], "o")
    plot.place_labels(fig, ax, summary, {name: "k" for name in summary})
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in ax.texts]
    assert len(boxes) == 3
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    plt.close(fig)


def test_runs_are_keyed_by_sequence_and_seed(tmp_path):
    plot = load_script()
    # two orders at seed 0 are two runs, not one replacing the other
    runs = plot.points(["m@order1:0=60,-5", "m@order2:0=50,-15", "m@1=70,-1"], "test")["m"]
    assert runs == {("order1", 0): (60.0, -5.0), ("order2", 0): (50.0, -15.0), ("", 1): (70.0, -1.0)}
    s = plot.summarise({k: v for k, v in runs.items() if k[0]})
    assert s["n"] == 2 and s["acc"] == 55 and s["acc_ci"] == (50, 60) and s["bwt_ci"] == (-15, -5)
    with pytest.raises(SystemExit, match="second run of sequence order1 seed 0"):
        plot.points(["m@order1:0=60,-5", "m@order1:0=61,-5"], "test")
    with pytest.raises(SystemExit, match="name both sequences"):  # an unnamed run may be order1's
        plot.points(["m@order1:0=60,-5", "m@0=61,-5"], "test")


def test_a_label_at_the_right_edge_goes_to_the_left_of_its_point():
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plot = load_script()
    fig, ax = plt.subplots()
    ax.set_xlim(-50, 0.5)
    ax.set_ylim(50, 100)
    name = "per-task (a long label)"
    plot.place_labels(fig, ax, {name: {"n": 2, "acc": 75.0, "bwt": 0.0}}, {name: "k"})
    renderer = fig.canvas.get_renderer()
    box, frame = ax.texts[0].get_window_extent(renderer), ax.get_window_extent(renderer)
    assert frame.x0 <= box.x0 and box.x1 <= frame.x1
    plt.close(fig)
