"""Per-model tallies of response rows: a mergeable monoid, like the credit.

Each unit's response rows give ``{model_id: ModelTally}`` (:func:`tally_responses`);
tallies merge in any order (:func:`merge_tallies`) into the sums behind the models table
(NEX is the mean GMF of the scored responses, baselines the means of their finite values).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nex_transforms.baselines import BASELINES


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

    def merge(self, other: "ModelTally") -> "ModelTally":
        return ModelTally(
            self.n_responses + other.n_responses, self.n_scored + other.n_scored,
            self.n_skipped + other.n_skipped, self.gmf_sum + other.gmf_sum,
            self.n_cycles + other.n_cycles, self.n_effective_cycles + other.n_effective_cycles,
            self.n_redundant_cycles + other.n_redundant_cycles,
            tuple(a + b for a, b in zip(self.baseline_sums, other.baseline_sums)),
            tuple(a + b for a, b in zip(self.baseline_counts, other.baseline_counts)))

    @property
    def nex(self) -> float:
        return self.gmf_sum / self.n_scored if self.n_scored else float("nan")

    def baseline_means(self) -> dict:
        return {name: (s / c if c else float("nan"))
                for name, s, c in zip(BASELINES, self.baseline_sums, self.baseline_counts)}


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
        out[model] = ModelTally(
            n_responses=int(sel.sum()), n_scored=int(finite.sum()),
            n_skipped=int((rows["n_kept_rows"][sel] < min_rows).sum()),
            gmf_sum=float(gmf[finite].sum()),
            n_cycles=int(rows["n_cycles"][sel].sum()),
            n_effective_cycles=int(rows["n_effective_cycles"][sel].sum()),
            n_redundant_cycles=int(rows["n_redundant_cycles"][sel].sum()),
            baseline_sums=tuple(sums), baseline_counts=tuple(counts))
    return out


def merge_tallies(parts) -> dict:
    """Merge ``{model: ModelTally}`` dicts."""
    out: dict[str, ModelTally] = {}
    for part in parts:
        for model, tally in part.items():
            out[model] = out[model].merge(tally) if model in out else tally
    return dict(sorted(out.items()))


__all__ = ["ModelTally", "merge_tallies", "tally_responses"]
