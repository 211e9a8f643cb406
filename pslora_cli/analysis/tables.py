"""The terminal rendering of one analysis: rich tables of the statistics, the intervention and the comparison."""

from __future__ import annotations

import math

from rich import box
from rich.table import Table

from ..report import Reporter
from .stats import SUMMARY_LABELS, store_label

VARIANTS = ("none", "selected", "other_sign", "random")


def print_analysis(reporter: Reporter, doc: dict) -> None:
    for d in [doc] + ([doc["compare"]] if doc.get("compare") else []):
        reporter.out.print(_shift_table(d))
        reporter.out.print(_subset_table(d))
        reporter.out.print(_correlation(d))
    if doc.get("intervention"):
        reporter.out.print(_intervention_table(doc["intervention"]))
    if doc.get("comparison"):
        reporter.out.print(_comparison_table(doc))
    if doc.get("files"):
        reporter.info("files: " + ", ".join(doc["files"]))


def _f(v, fmt: str = ".3f") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    return format(v, fmt)


def _pct(v) -> str:
    return "—" if v is None else f"{100 * v:.1f}"


def _label(key: str, k_ref) -> str:
    return SUMMARY_LABELS[key].replace("top-k%", f"top-{k_ref}%")


def _table(title: str, columns: list[str]) -> Table:
    t = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 1))
    for i, col in enumerate(columns):
        t.add_column(col, justify="left" if i == 0 else "right")
    return t


def _shift_table(d: dict) -> Table:
    k = d["k_ref"]
    t = _table(f"{d['store']} ({d['method']['merge']} merge): shifts per stage, pooled over "
               f"{len(d['modules'])} modules. D = ΔW_t, H = Σ earlier ΔW, C = H + D; D/H = ‖D‖/‖H‖; W1, KS "
               f"between H and C; same% of entries with D, H ≠ 0; conflict = Σ_(DH<0)|DH| / Σ|DH|; flip% = sign C "
               f"≠ sign H; top{k} opp% = opposite-sign % in the top-{k}% by |{d['rank_by']}|; drop% = old-task "
               f"accuracy lost at this stage",
               ["task", "D/H", "W1", "KS", "same%", "conflict", "flip%", f"top{k} opp%", "drop%"])
    for st in d["stages"]:
        s = st["summary"]
        t.add_row(st["task"], _f(s["relative_norm"]), _f(s["wasserstein1"], ".2e"), _f(s["ks"]),
                  _pct(s["same_fraction"]), _f(s["conflict_ratio"], ".4f"), _pct(s["flip_rate"]),
                  _pct(s["top_opposite_fraction"]), _pct((st["accuracy"] or {}).get("drop")))
    return t


def _subset_table(d: dict) -> Table:
    t = _table(f"top-k% of entries by |{d['rank_by']}| (pooled): % with sign opposite to H / their % of ‖D‖₁",
               ["task"] + [f"top {kk}%" for kk in d["ks"]])
    for st in d["stages"]:
        t.add_row(st["task"], *[f"{_pct(e['opposite']['fraction'])} / {_pct(e['opposite']['l1_share'])}"
                                for e in st["pooled"]["subsets"]["top"].values()])
    return t


def _correlation(d: dict) -> Table | str:
    """The correlation table, or the line that says why there is none."""
    corr = d["correlation"]
    if corr["points"] < 3:
        return f"correlation with the accuracy drop: {corr.get('note', 'not enough stages')}"
    t = _table(f"correlation across {corr['points']} stages with the old-task accuracy drop",
               ["statistic", "Pearson", "Spearman"])
    for key, v in corr["statistics"].items():
        t.add_row(_label(key, d["k_ref"]), _f(v["pearson"]), _f(v["spearman"]))
    return t


def _intervention_table(iv: dict) -> Table:
    sub = iv["subset"]
    t = _table(f"intervention: zero entries of ΔW_t, then W0 + {iv['merge']} merge; accuracy % on old / new "
               f"task ({iv['kind'].replace('_', '-')})",
               ["task", "zeroed", "none", f"{sub['sign']} {sub['part']}{sub['k']}%", f"{iv['control_sign']} sign",
                "random"])
    for e in iv["stages"]:
        v = e["variants"]
        t.add_row(e["task"], str(e["count"]),
                  *[f"{_pct(v[n]['old_accuracy'])} / {_pct(v[n]['new_accuracy'])}" for n in VARIANTS])
    return t


def _comparison_table(doc: dict) -> Table:
    cmp = doc["comparison"]
    t = _table(f"comparison, mean over stages {', '.join(cmp['tasks'])} (merges: {cmp['merge']['a']} vs "
               f"{cmp['merge']['b']})",
               ["statistic", store_label(doc), store_label(doc["compare"])])
    for key in list(SUMMARY_LABELS) + ["drop"]:
        label = "old-acc drop" if key == "drop" else _label(key, doc["k_ref"])
        t.add_row(label, _f(cmp["mean"]["a"][key], ".4f"), _f(cmp["mean"]["b"][key], ".4f"))
    return t
