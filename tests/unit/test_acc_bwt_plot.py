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
