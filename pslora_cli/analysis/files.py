"""The files of one analysis: CSV tables and figures rendered in memory, then written atomically."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from ..core import shifts as S
from ..store import atomic_path, write_json_atomic
from .figures import render_figures
from .stats import SUMMARY_LABELS

OUTPUT_FILES = ("shifts.csv", "subsets.csv", "histograms.csv", "correlation.csv", "intervention.csv",
                "comparison.csv", "shift-histograms.png", "sign-agreement.png", "intervention.png", "compare.png")
SIGN_GROUPS = ("same", "opposite", "zero")


def render_files(doc: dict, figures: bool = True) -> dict[str, bytes]:
    files = {"shifts.csv": shifts_csv(doc), "subsets.csv": subsets_csv(doc), "histograms.csv": histograms_csv(doc),
             "correlation.csv": correlation_csv(doc)}
    if doc.get("intervention"):
        files["intervention.csv"] = intervention_csv(doc)
    if doc.get("comparison"):
        files["comparison.csv"] = comparison_csv(doc)
    if figures and doc["stages"]:
        files.update(render_figures(doc))
    return files


def write_all(folder: Path, files: dict[str, bytes], doc: dict) -> None:
    """Write this run's files; remove the files an earlier run left there that this one does not produce (e.g.
    compare.png after a run without --compare), so that the folder always describes one run."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        with atomic_path(folder / name) as tmp:
            tmp.write_bytes(data)
    write_json_atomic(folder / "shifts.json", doc)
    for name in OUTPUT_FILES:
        if name not in files:
            (folder / name).unlink(missing_ok=True)


def _csv(rows: list[list]) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    for row in rows:
        w.writerow(["" if v is None else v for v in row])
    return buf.getvalue().encode()


def _module_rows(doc: dict):
    """(task, module, statistics) for every stage: the pooled statistics first, then each module's."""
    for st in doc["stages"]:
        for module, s in [("pooled", st["pooled"])] + list(st["modules"].items()):
            yield st["task"], module, s


def shifts_csv(doc: dict) -> bytes:
    levels = doc["stages"][0]["pooled"]["quantiles"]["levels"] if doc["stages"] else []
    qcols = [f"abs_{which}_q{q:g}" for which in ("delta", "history", "combined") for q in levels]
    rows = [["task", "module", "numel", "delta_fro", "history_fro", "combined_fro", "relative_norm", "delta_l1",
             "wasserstein1", "ks", "samples", "subsampled", "both_nonzero", "same_fraction", "opposite_fraction",
             "conflict_ratio", "flip_rate"] + qcols]
    for task, module, s in _module_rows(doc):
        n, sh, sg, q = s["norms"], s["shift"], s["sign"], s["quantiles"]
        rows.append([task, module, s["numel"], n["delta_fro"], n["history_fro"], n["combined_fro"],
                     n["relative"], n["delta_l1"], sh["wasserstein1"], sh["ks"], sh["samples"],
                     int(sh["subsampled"]), sg["both_nonzero"], sg["same_fraction"], sg["opposite_fraction"],
                     sg["conflict_ratio"], sg["flip_rate"]] + q["delta"] + q["history"] + q["combined"])
    return _csv(rows)


def subsets_csv(doc: dict) -> bytes:
    rows = [["task", "module", "rank_by", "part", "k", "count"]
            + [f"{g}_{c}" for g in SIGN_GROUPS for c in ("count", "fraction", "l1_share")] + ["l1_share"]]
    for task, module, s in _module_rows(doc):
        sub = s["subsets"]
        for part in S.PARTS:
            for k, e in sub[part].items():
                rows.append([task, module, sub["rank_by"], part, k, e["count"]]
                            + [e[g][c] for g in SIGN_GROUPS for c in ("count", "fraction", "l1_share")]
                            + [e["l1_share"]])
    return _csv(rows)


def histograms_csv(doc: dict) -> bytes:
    rows = [["task", "bin_left", "bin_right", "delta", "history", "combined"]]
    for st in doc["stages"]:
        hst = st["pooled"]["histogram"]
        for j in range(len(hst["delta"])):
            rows.append([st["task"], hst["edges"][j], hst["edges"][j + 1], hst["delta"][j], hst["history"][j],
                         hst["combined"][j]])
    return _csv(rows)


def correlation_csv(doc: dict) -> bytes:
    corr = doc["correlation"]
    return _csv([["statistic", "points", "pearson", "spearman"]]
                + [[k, corr["points"], v["pearson"], v["spearman"]] for k, v in corr["statistics"].items()])


def intervention_csv(doc: dict) -> bytes:
    rows = [["task", "variant", "removed", "removed_l1_share", "old_accuracy", "new_accuracy"]]
    for e in doc["intervention"]["stages"]:
        for name, v in e["variants"].items():
            rows.append([e["task"], name, v["removed"], v["removed_l1_share"], v["old_accuracy"], v["new_accuracy"]])
    return _csv(rows)


def comparison_csv(doc: dict) -> bytes:
    rows = [["task", "statistic", "a", "b", "a_minus_b"]]
    for r in doc["comparison"]["stages"]:
        for k in SUMMARY_LABELS:
            rows.append([r["task"], k, r["a"][k], r["b"][k], r["a_minus_b"][k]])
        rows.append([r["task"], "drop", r["a_drop"], r["b_drop"],
                     None if r["a_drop"] is None or r["b_drop"] is None else r["a_drop"] - r["b_drop"]])
    return _csv(rows)
