"""Method parameters: one frozen, validated dataclass."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from .errors import ParameterError, expected

#: Number of bits of the unit index inside a packed neuron key.
UNIT_BITS = 16
#: Layer value reserved for padding; such keys are dropped on read.
RESERVED_LAYER = 255
#: Size of the key space: 64 layers x 65,536 units.
KEY_SPACE = 1 << 22


@dataclass(frozen=True)
class NexParams:
    """Parameters of NEX scoring (METHOD.md sections 2-5).

    Attributes:
        rho: stay probability of the sticky two-state HMM (both states).
        min_run: runs of equal labels shorter than this are smoothed away.
        row_size: tokens per row used at capture time (recorded, not used by the maths).
        min_rows: a response with fewer kept rows gives no credit and no labels.
        eps: the small constant of the weight log-ratio (``log((Eff+eps)/(Red+eps))``).
        mad_eps: added to the MAD in the robust z-score.
        kappa_eps: added to ``sE`` in the consolidation ``1 - sX / (sE + kappa_eps)``.
        reuse_eps: added to the X-row total mass in the reuse fraction.
        gmm_max_iter, gmm_tol, gmm_reg_covar: the 2-component mixture fit
            (scikit-learn ``GaussianMixture`` defaults of the reference).
        var_floor: emission variances are floored at this value.
        kmeans_max_iter, kmeans_tol: the k-means initialisation (scikit-learn defaults).
        fit_hmm: project extension, off by default: refine rho and the emissions of each
            trace by EM (Baum-Welch) with a Beta prior on rho centred on ``rho``.
        hmm_em_iter: EM iterations of that extension.
        rho_prior_strength: pseudo-count weight of the Beta prior on rho.
    """

    rho: float = 0.95
    min_run: int = 2
    row_size: int = 32
    min_rows: int = 3
    eps: float = 1e-6
    mad_eps: float = 1e-6
    kappa_eps: float = 1e-6
    reuse_eps: float = 1e-6
    gmm_max_iter: int = 50
    gmm_tol: float = 1e-3
    gmm_reg_covar: float = 1e-6
    var_floor: float = 1e-6
    kmeans_max_iter: int = 300
    kmeans_tol: float = 1e-4
    fit_hmm: bool = False
    hmm_em_iter: int = 20
    rho_prior_strength: float = 20.0

    def __post_init__(self) -> None:
        if not (isinstance(self.rho, (int, float)) and 0.5 <= self.rho < 1.0):
            raise ParameterError(expected("rho", "a number in [0.5, 1)", self.rho))
        for name in ("min_run", "row_size", "min_rows", "gmm_max_iter", "kmeans_max_iter",
                     "hmm_em_iter"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ParameterError(expected(name, "an integer >= 1", value))
        for name in ("eps", "mad_eps", "kappa_eps", "reuse_eps", "gmm_tol",
                     "gmm_reg_covar", "var_floor", "kmeans_tol", "rho_prior_strength"):
            value = getattr(self, name)
            if (isinstance(value, bool) or not isinstance(value, (int, float))
                    or not math.isfinite(value) or value < 0):
                raise ParameterError(expected(name, "a finite number >= 0", value))
        if self.eps <= 0:
            raise ParameterError(expected("eps", "a number > 0", self.eps))
        if not isinstance(self.fit_hmm, bool):
            raise ParameterError(expected("fit_hmm", "a bool", self.fit_hmm))

    def to_dict(self) -> dict:
        """Plain dict of the parameters, for output metadata."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "NexParams":
        """Inverse of :meth:`to_dict`; unknown names are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ParameterError(expected("NexParams fields", f"a subset of {sorted(names)}",
                                          unknown))
        return cls(**values)
