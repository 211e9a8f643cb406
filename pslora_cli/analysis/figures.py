"""The PNG figures of one analysis, rendered in memory: the pooled shift histograms (the paper's Figure 1b), the
sign agreement, the intervention (Figure 2) and the comparison of two stores."""

from __future__ import annotations

import io

import numpy as np

from .stats import store_label

HISTOGRAM_LINES = (("history", "tab:blue", "-", "H (before)"), ("combined", "tab:orange", "-", "C = H + ΔW (after)"),
                   ("delta", "tab:green", "--", "ΔW_t"))
RANK_SYMBOLS = {"delta": "ΔW_t", "history": "H", "combined": "C"}
COMPARISON_TITLES = {"conflict_ratio": "conflict ratio Σ_{DH<0}|DH| / Σ|DH|",
                     "opposite_fraction": "opposite-sign fraction (D, H ≠ 0)",
                     "top_opposite_l1_share": "opposite sign in top-k%: share of ‖D‖₁",
                     "flip_rate": "flip rate: sign C ≠ sign H", "relative_norm": "relative norm ‖D‖/‖H‖",
                     "wasserstein1": "Wasserstein-1 (H, C)", "ks": "Kolmogorov–Smirnov (H, C)",
                     "drop": "old-task accuracy drop (points)"}


def render_figures(doc: dict) -> dict[str, bytes]:
    plt = _pyplot()
    docs = [doc] + ([doc["compare"]] if doc.get("compare") else [])
    out = {"shift-histograms.png": _png(plt, shift_histograms(plt, docs)),
           "sign-agreement.png": _png(plt, sign_agreement(plt, doc, docs))}
    if doc.get("intervention"):
        out["intervention.png"] = _png(plt, intervention_figure(plt, doc))
    if doc.get("comparison"):
        out["compare.png"] = _png(plt, comparison_figure(plt, doc))
    return out


def _pyplot():
    """pyplot with the file-only backend, imported only when figures are drawn (the import takes a while)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(plt, fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def _nan(v):
    return float("nan") if v is None else v


def _finish(fig, ax, title: str, rect: tuple, loc: str, ncol: int, **title_kw) -> None:
    """One legend for the figure (from ax's artists), the title, and the layout inside rect."""
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc=loc, fontsize=8, ncol=ncol, frameon=False)
    fig.suptitle(title, fontsize=10, **title_kw)
    fig.tight_layout(rect=rect)


def shift_histograms(plt, docs: list[dict]):
    """Figure 1b: per stage, the pooled value distributions of H (before task t) and C (after) on shared bins;
    one row per store."""
    ncols = max(len(d["stages"]) for d in docs)
    fig, axes = plt.subplots(len(docs), ncols, figsize=(3.3 * ncols, 2.9 * len(docs)), squeeze=False)
    for r, d in enumerate(docs):
        for c in range(ncols):
            ax = axes[r][c]
            if c >= len(d["stages"]):
                ax.axis("off")
                continue
            _histogram_panel(plt, ax, d, d["stages"][c])
            if c == 0:
                ax.set_ylabel("entries (log)", fontsize=8)
            if r == len(docs) - 1:
                ax.set_xlabel("parameter update value", fontsize=8)
    _finish(fig, axes[0][0], "Parameter shift per stage, pooled over modules (shared bins)", (0, 0, 1, 0.96),
            "upper right", 3, x=0.3)
    return fig


def _histogram_panel(plt, ax, d: dict, st: dict) -> None:
    hst = st["pooled"]["histogram"]
    edges = np.array(hst["edges"])
    for key, color, ls, label in HISTOGRAM_LINES:
        counts = np.array(hst[key], dtype=float)
        ax.stairs(np.where(counts > 0, counts, np.nan), edges, color=color, linestyle=ls, label=label)
    ax.set_yscale("log")
    sh = st["pooled"]["shift"]
    ax.set_title(f"{store_label(d)}: {st['task']}  W1={sh['wasserstein1']:.2e} KS={sh['ks']:.3f}", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.xaxis.set_major_locator(plt.MaxNLocator(5, symmetric=True))
    ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 0))
    ax.xaxis.get_offset_text().set_fontsize(7)


def sign_agreement(plt, doc: dict, docs: list[dict]):
    """Per stage, the same/opposite fractions with the conflict ratio and flip rate; and the opposite fraction
    inside the top-k% subsets by the ranking key."""
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.4), gridspec_kw={"width_ratios": [1.15, 1], "wspace": 0.5})
    _sign_fractions_panel(axes[0], doc, docs)
    _top_opposite_panel(axes[1], doc, docs)
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.12, top=0.92)
    return fig


def _sign_fractions_panel(ax, doc: dict, docs: list[dict]) -> None:
    width = 0.8 / len(docs)
    tasks = [st["task"] for st in doc["stages"]]
    x = np.arange(len(tasks))
    for j, d in enumerate(docs):
        by_task = {st["task"]: st["summary"] for st in d["stages"]}
        values = {key: [_nan(by_task.get(t, {}).get(key)) for t in tasks]
                  for key in ("same_fraction", "opposite_fraction", "conflict_ratio", "flip_rate")}
        pos, alpha, name = x - 0.4 + width * (j + 0.5), 0.75 if j == 0 else 0.4, store_label(d)
        ax.bar(pos, values["same_fraction"], width * 0.9, color="tab:green", alpha=alpha, label=f"same sign ({name})")
        ax.bar(pos, values["opposite_fraction"], width * 0.9, bottom=values["same_fraction"], color="tab:red",
               alpha=alpha, label=f"opposite sign ({name})")
        ax.plot(pos, values["conflict_ratio"], "o" if j == 0 else "D", color="black", markeredgecolor="white",
                markersize=8, label=f"conflict ratio ({name})")
        ax.plot(pos, values["flip_rate"], "v" if j == 0 else "^", color="navy", markeredgecolor="white",
                markersize=8, label=f"flip rate ({name})")
    ax.set_xticks(x, tasks)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("fraction of entries (ΔW_t ≠ 0, H ≠ 0)")
    ax.set_title("sign of ΔW_t against the history H", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)


def _top_opposite_panel(ax, doc: dict, docs: list[dict]) -> None:
    all_tasks = list(dict.fromkeys(st["task"] for d in docs for st in d["stages"]))
    for j, d in enumerate(docs):
        for st in d["stages"]:
            top = st["pooled"]["subsets"]["top"]
            ax.plot([float(k) for k in top], [top[k]["opposite"]["fraction"] for k in top],
                    marker="o" if j == 0 else "s", linestyle="-" if j == 0 else "--",
                    color=f"C{all_tasks.index(st['task']) % 10}", label=f"{store_label(d)} {st['task']}")
    ax.set_xscale("log")
    ax.set_xticks([float(k) for k in doc["ks"]], [str(k) for k in doc["ks"]])
    ax.minorticks_off()
    ax.set_xlabel(f"top-k% of entries by |{RANK_SYMBOLS[doc['rank_by']]}|")
    ax.set_ylabel("fraction with sign opposite to H")
    ax.set_ylim(bottom=0)
    ax.set_title("opposite-sign share among the largest entries", fontsize=10)
    ax.legend(fontsize=7, ncol=2)


def intervention_figure(plt, doc: dict):
    """Figure 2: old- and new-task accuracy per stage for each variant of the intervention."""
    iv = doc["intervention"]
    sub = iv["subset"]
    names = [("none", "no change"), ("selected", f"{sub['sign']} sign, {sub['part']}-{sub['k']}%"),
             ("other_sign", f"as many {iv['control_sign']}-sign"), ("random", "as many random")]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    x = np.arange(len(iv["stages"]))
    width = 0.8 / len(names)
    for ax, key, title in ((axes[0], "old_accuracy", "old tasks 1..t-1 (mean accuracy)"),
                           (axes[1], "new_accuracy", "new task t (accuracy)")):
        for j, (name, label) in enumerate(names):
            vals = [100 * e["variants"][name][key] for e in iv["stages"]]
            ax.bar(x - 0.4 + width * (j + 0.5), vals, width * 0.9, label=label)
        ax.set_xticks(x, [f"{e['task']}\n({e['count']} zeroed)" for e in iv["stages"]])
        ax.set_ylabel(f"accuracy (%), {iv['kind'].replace('_', '-')}")
        ax.set_title(title, fontsize=10)
        ax.set_ylim(0, 100)
    _finish(fig, axes[0], f"zeroing entries of ΔW_t before merging ({iv['merge']}); {store_label(doc)}",
            (0, 0.06, 1, 1), "lower center", 4)
    return fig


def comparison_figure(plt, doc: dict):
    """The pooled statistics and the accuracy drop per stage, store against store."""
    cmp = doc["comparison"]
    fig, axes = plt.subplots(2, 4, figsize=(15, 6.5))
    x = np.arange(len(cmp["tasks"]))
    for ax, (key, title) in zip(axes.flat, COMPARISON_TITLES.items()):
        for j, (side, d) in enumerate((("a", doc), ("b", doc["compare"]))):
            if key == "drop":
                vals = [100 * _nan(r[f"{side}_drop"]) for r in cmp["stages"]]
            else:
                vals = [_nan(r[side][key]) for r in cmp["stages"]]
            ax.bar(x - 0.2 + 0.4 * j, vals, 0.38, label=f"{store_label(d)} ({d['method']['merge']} merge)")
        ax.set_xticks(x, cmp["tasks"])
        ax.set_title(title.replace("top-k%", f"top-{doc['k_ref']}%"), fontsize=9)
        ax.tick_params(labelsize=8)
        ax.axhline(0, color="black", linewidth=0.6)
    _finish(fig, axes[0][0], "pooled shift statistics per stage: " + " vs ".join(
        store_label(d) for d in (doc, doc["compare"])), (0, 0, 1, 0.95), "upper right", 2, x=0.3)
    return fig
