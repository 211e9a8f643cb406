"""`pslora analyze-shifts`: the paper's parameter-shift analysis (METHOD.md §4) on a store's saved adapters.

For each stage t >= 2 (task t trained after tasks 1..t-1), per adapted module and pooled over all modules:
D = ΔW_t = s·B_t A_t, H = Σ_{i<t} ΔW_i (always the sum of the earlier updates, whatever the merge), C = H + D;
the statistics are those of core/shifts.py. Only the adapters are read (no model, no data), unless --intervene.

- correlation: when STORE/eval/matrix.json holds fresh rows (its row and column keys match the adapters and heads
  in the store), drop_t = mean_{i<t} (R[t-1][i] − R[t][i]) on the primary matrix (the old tasks' accuracy lost
  when task t is added; stages are W0 + merge(ΔW_1..ΔW_t) with the store's merge) is correlated across t with the
  pooled statistics (Pearson and Spearman; null for fewer than 3 stages).
- --intervene (the paper's Figure 2): for stage t, zero the entries of ΔW_t in the chosen subset (by default the
  opposite-sign entries among the top-10% of the pooled entries by |ΔW_t|), evaluate W0 + merge(ΔW_1..ΔW_{t-1},
  modified ΔW_t) on tasks 1..t with stage t's heads; compare with zeroing as many entries of the other sign (those
  with the largest key, or the smallest for a bottom subset) and as many random entries (drawn with the seed + t).
- --compare OTHER: the same analysis of another store (read only), side by side.

Outputs (each written atomically) go to STORE/analysis/ (under the store's lock) and to --out DIR:
shifts.json (the document), shifts.csv (one row per stage and module, plus "pooled"), subsets.csv,
histograms.csv (pooled), intervention.csv, correlation.csv, comparison.csv and the figures shift-histograms.png,
sign-agreement.png, intervention.png, compare.png.

Modules: options (the command's options), stats (the statistics from the adapters, the accuracy drops, the
comparison), intervention, files (CSV and writing), figures, tables (terminal); the command's entry point is
commands/analyze.py.
"""

from .options import AnalysisOptions, parse_ks, parse_rank_by
from .tables import print_analysis

__all__ = ["AnalysisOptions", "parse_ks", "parse_rank_by", "print_analysis"]
