"""`pslora analyze-shifts`: the paper's parameter-shift analysis of a store's adapters."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import (DEFAULT_STORE, DeviceOpt, JsonOpt, QuietOpt, SeedOpt, SetOpt, StoreOpt, ThreadsOpt, comma_list,
                     emit_json, session)


def analyze_shifts_cmd(
    compare: Annotated[Optional[Path], typer.Option(
        "--compare", help="Another store to analyse side by side (read only), e.g. one trained without the "
                          "stability loss.")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Also write the JSON, CSV and PNG files here.")] = None,
    adapters: Annotated[Optional[list[Path]], typer.Option(
        "--adapters", help="PEFT LoRA adapter folders from anywhere (--adapters A B C), analysed in that order "
                           "instead of a store's tasks; files go to --out (default ./pslora-shifts).")] = None,
    rank_by: Annotated[str, typer.Option("--rank-by", help="Ranking key of the top/bottom-k% subsets: delta "
                                                           "(|ΔW_t|), history (|H|) or combined (|C|).")] = "delta",
    ks: Annotated[str, typer.Option("--ks", help="Subset sizes in % of the entries.")] = "1,5,10,20,50",
    tasks: Annotated[Optional[str], typer.Option("--tasks", help="Comma-separated stages to analyse (task ids "
                                                                 "from the second on; default: all).")] = None,
    intervene: Annotated[bool, typer.Option("--intervene", help="Figure 2: zero the --subset entries of ΔW_t and "
                                                                "re-evaluate the old tasks (loads the model and "
                                                                "data).")] = False,
    subset: Annotated[str, typer.Option("--subset", help="SIGN:PART:K for --intervene: same|opposite, top|bottom, "
                                                         "K in %.")] = "opposite:top:10",
    bins: Annotated[int, typer.Option("--bins", help="Histogram bins.")] = 61,
    max_samples: Annotated[int, typer.Option("--max-samples", help="Above this many entries, quantiles, W1 and KS "
                                                                   "use a seeded subsample of this size.")] = 1 << 21,
    figures: Annotated[bool, typer.Option("--figures/--no-figures", help="Write the PNG figures.")] = True,
    store: StoreOpt = DEFAULT_STORE, device: DeviceOpt = "auto", seed: SeedOpt = None, json_: JsonOpt = False,
    quiet: QuietOpt = False, set_: SetOpt = None, threads: ThreadsOpt = None,
):
    """The paper's parameter-shift analysis of the stored adapters (no model load unless --intervene).

    For each stage t >= 2, per module and pooled: D = ΔW_t, H = sum of the earlier ΔW, C = H + D; quantiles and
    shared-bin histograms, ‖D‖/‖H‖, Wasserstein-1 and KS between H and C, sign agreement (same/opposite
    fraction where both are nonzero, conflict ratio Σ_{DH<0}|DH| / Σ|DH|, flip rate sign C ≠ sign H), top and
    bottom-k% subsets split by sign with their share of ‖D‖₁; correlation with the old-task accuracy drop when
    the store has an accuracy matrix. Files go to STORE/analysis/ and --out.
    """
    from ..analysis import AnalysisOptions, parse_ks, parse_rank_by, print_analysis
    from ..commands.analyze import analyze_shifts

    s = session(store, device, seed, json_, quiet, set_, threads)
    aopts = AnalysisOptions(rank_by=parse_rank_by(rank_by), ks=parse_ks(ks), bins=bins, max_samples=max_samples,
                            tasks=comma_list(tasks), intervene=intervene, subset=subset, compare=compare, out=out,
                            figures=figures, adapters=adapters)
    doc = analyze_shifts(s, aopts)
    if json_:
        emit_json(doc)
    else:
        print_analysis(s.reporter, doc)
