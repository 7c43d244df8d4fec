"""NEX: label-free scoring of LLM reasoning from MLP neurons (pure numpy core).

The method of ``METHOD.md``: novelty per row, a sticky two-state HMM for E/X phases,
cycles and neuron credit, corpus-wide weights, Good-Mass Fraction and NEX. Every stage
works on a whole batch of traces at once.

Typical use::

    from nex_transforms import RowCorpus, learn_weights, score_corpus
    weights = learn_weights(corpus)          # self-calibration
    result = score_corpus(corpus, weights)   # result.gmf, result.nex, result.log_gap
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .corpus import Aggregates, KeptRows, RowCorpus, concat_corpora, kept_rows
from .credit import CreditAccumulator, CycleCredit, TraceAnalysis, analyse, cycle_credit
from .errors import CorpusError, NexError, ParameterError, WeightsError
from .novelty import KeyIndex, Novelty, novelty
from .params import KEY_SPACE, RESERVED_LAYER, UNIT_BITS, NexParams
from .scoring import check_weights, good_mass_fraction, log_gap, nex_score
from .segmentation import Segmentation, robust_z, segment
from .segments import chunks

__all__ = [
    "Aggregates", "CorpusError", "CreditAccumulator", "CycleCredit", "KEY_SPACE",
    "KeptRows", "KeyIndex", "NexError", "NexParams", "Novelty", "ParameterError", "RESERVED_LAYER",
    "RowCorpus", "ScoreResult", "Segmentation", "TraceAnalysis", "UNIT_BITS",
    "WeightsError", "accumulate", "analyse", "check_weights", "concat_corpora",
    "cycle_credit", "good_mass_fraction", "kept_rows", "learn_weights", "log_gap",
    "nex_score", "novelty", "robust_z", "score_corpus", "segment", "trace_batches",
    "ACCUMULATE_BATCH_ENTRIES", "DEFAULT_BATCH_ENTRIES",
]

#: Row entries of an engine's work unit by default (:func:`trace_batches`): bounds each
#: worker's memory and leaves enough units to spread over workers (any split gives the
#: same totals).
DEFAULT_BATCH_ENTRIES = 1 << 20

#: Row entries the in-process :func:`accumulate` analyses together by default. Larger than
#: an engine's work unit: one process pays every batch's fixed costs (segmentation set-up,
#: key tables) in turn, and the per-entry passes run in cache-sized chunks whatever the
#: batch size; much larger batches are slower again, their whole-batch arrays being fresh
#: memory.
ACCUMULATE_BATCH_ENTRIES = 1 << 22


def trace_batches(trace_entries, batch_entries: int = DEFAULT_BATCH_ENTRIES) -> list:
    """Consecutive ``(start, stop)`` trace ranges holding about ``batch_entries`` entries.

    ``trace_entries`` holds the row entries of each trace. A batch never splits a trace
    and always holds at least one; batches cover ``[0, len(trace_entries))`` in order.
    The one batching rule of the project: the core's :func:`accumulate` and the engines'
    work units both use it.
    """
    entries = np.asarray(trace_entries, np.int64)
    return chunks(np.concatenate([[0], np.cumsum(entries)]), batch_entries)


def accumulate(corpus: RowCorpus, params: NexParams | None = None,
               batch_entries: int = ACCUMULATE_BATCH_ENTRIES) -> CreditAccumulator:
    """Credit of a whole corpus, analysed in batches of traces.

    Each batch indexes only the keys it needs (its credited keys; all its keys when its
    traces are short): cheaper than one index of every key of the corpus.
    """
    params = params or NexParams()
    parts = []
    per_trace = np.diff(corpus.row_entry_ptr[corpus.trace_row_ptr])
    for start, stop in trace_batches(per_trace, batch_entries):
        part = corpus.slice_traces(start, stop)
        parts.append(CreditAccumulator.empty().add(part, params))
    return CreditAccumulator.merge_all(parts)


def learn_weights(corpus: RowCorpus, params: NexParams | None = None,
                  batch_entries: int = ACCUMULATE_BATCH_ENTRIES) -> np.ndarray:
    """Neuron weights (float32, 2^22) learned on a corpus."""
    params = params or NexParams()
    return accumulate(corpus, params, batch_entries).finalize(params.eps)


@dataclass(frozen=True)
class ScoreResult:
    """GMF per trace, NEX and log-gap of a scored corpus."""

    gmf: np.ndarray
    nex: float
    log_gap: float

    @property
    def n_scored(self) -> int:
        return int(np.isfinite(self.gmf).sum())


def score_corpus(corpus: RowCorpus | Aggregates, weights: np.ndarray) -> ScoreResult:
    """Score every trace of a corpus (its aggregates) with given weights."""
    aggregates = corpus.aggregate() if isinstance(corpus, RowCorpus) else corpus
    gmf = good_mass_fraction(aggregates, weights)
    nex = nex_score(gmf)
    return ScoreResult(gmf=gmf, nex=nex, log_gap=log_gap(nex))
