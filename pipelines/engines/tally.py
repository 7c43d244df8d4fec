"""Per-model tallies of response rows: a mergeable monoid, like the credit.

Each unit's response rows give ``{model_id: ModelTally}`` (:func:`tally_responses`);
tallies merge in any order (:func:`merge_tallies`) into the sums behind the models table
(NEX is the mean GMF of the scored responses, baselines the means of their finite values).
The regime diagnostics are medians, which no sum gives: a tally keeps the finite values of
its scored responses, sorted, so that any merge order gives the same tally.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nex_transforms.baselines import BASELINES
from nex_transforms.diagnostics import median_over

#: Per-response regime diagnostics whose model-level value is the median over the scored
#: responses (``nex_transforms.diagnostics``).
MEDIAN_COLUMNS = ("late_novelty", "pool_coverage")


@dataclass(frozen=True)
class ModelTally:
    """Per-model sums over response rows (a commutative monoid, like the credit)."""

    n_responses: int = 0
    n_scored: int = 0
    n_skipped: int = 0
    gmf_sum: float = 0.0
    n_cycles: int = 0
    n_effective_cycles: int = 0
    n_redundant_cycles: int = 0
    baseline_sums: tuple = (0.0,) * len(BASELINES)
    baseline_counts: tuple = (0,) * len(BASELINES)
    #: per :data:`MEDIAN_COLUMNS` name, the sorted finite values of the scored responses
    median_values: tuple = ((),) * len(MEDIAN_COLUMNS)
    #: neurons the model's capture hooked (0: unknown)
    hooked_neurons: int = 0

    def merge(self, other: "ModelTally") -> "ModelTally":
        return ModelTally.merge_all([self, other])

    @classmethod
    def merge_all(cls, tallies) -> "ModelTally":
        """One tally of many (each value list concatenated and sorted once)."""
        tallies = list(tallies)
        if not tallies:
            return cls()

        def total(name):
            return sum(getattr(t, name) for t in tallies)

        return cls(
            total("n_responses"), total("n_scored"), total("n_skipped"), total("gmf_sum"),
            total("n_cycles"), total("n_effective_cycles"), total("n_redundant_cycles"),
            tuple(map(sum, zip(*(t.baseline_sums for t in tallies)))),
            tuple(map(sum, zip(*(t.baseline_counts for t in tallies)))),
            tuple(tuple(sorted(v for t in tallies for v in t.median_values[i]))
                  for i in range(len(MEDIAN_COLUMNS))),
            max(t.hooked_neurons for t in tallies))

    @property
    def nex(self) -> float:
        return self.gmf_sum / self.n_scored if self.n_scored else float("nan")

    def baseline_means(self) -> dict:
        return {name: (s / c if c else float("nan"))
                for name, s, c in zip(BASELINES, self.baseline_sums, self.baseline_counts)}

    def medians(self) -> dict:
        """``{name: median}`` of :data:`MEDIAN_COLUMNS` (NaN where no response has one)."""
        return {name: median_over(values)
                for name, values in zip(MEDIAN_COLUMNS, self.median_values)}


def tally_responses(rows: dict, min_rows: int) -> dict:
    """Model id -> :class:`ModelTally` of a batch of response rows."""
    models = np.asarray(rows["model_id"], dtype=object)
    out = {}
    for model in sorted(set(models.tolist())):
        sel = models == model
        gmf = rows["gmf"][sel]
        finite = np.isfinite(gmf)
        sums, counts = [], []
        for name in BASELINES:
            values = rows[name][sel]
            ok = np.isfinite(values)
            sums.append(float(values[ok].sum()))
            counts.append(int(ok.sum()))
        medians = []
        for name in MEDIAN_COLUMNS:
            values = np.asarray(rows[name], np.float64)[sel] if name in rows \
                else np.full(int(sel.sum()), np.nan)
            medians.append(tuple(sorted(values[finite & np.isfinite(values)].tolist())))
        hooked = np.asarray(rows["hooked_neurons"])[sel] if "hooked_neurons" in rows else [0]
        out[model] = ModelTally(
            n_responses=int(sel.sum()), n_scored=int(finite.sum()),
            n_skipped=int((rows["n_kept_rows"][sel] < min_rows).sum()),
            gmf_sum=float(gmf[finite].sum()),
            n_cycles=int(rows["n_cycles"][sel].sum()),
            n_effective_cycles=int(rows["n_effective_cycles"][sel].sum()),
            n_redundant_cycles=int(rows["n_redundant_cycles"][sel].sum()),
            baseline_sums=tuple(sums), baseline_counts=tuple(counts),
            median_values=tuple(medians), hooked_neurons=int(np.max(hooked, initial=0)))
    return out


def merge_tallies(parts) -> dict:
    """Merge ``{model: ModelTally}`` dicts (each model's tallies merged at once)."""
    grouped: dict[str, list[ModelTally]] = {}
    for part in parts:
        for model, tally in part.items():
            grouped.setdefault(model, []).append(tally)
    return {model: ModelTally.merge_all(grouped[model]) for model in sorted(grouped)}


__all__ = ["MEDIAN_COLUMNS", "ModelTally", "merge_tallies", "tally_responses"]
