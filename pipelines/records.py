"""The in-memory record of one captured trace: what capture produces and stores write.

This is the contract between capture (``pipelines/capture``) and the activation store
(``pipelines/store``): capture builds :class:`TraceRecord` objects, the store writer
persists a list of them as one part. A record's sparse rows are a :class:`SparseRows`,
the type the capture engine produces them as.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np

from nex_transforms.baselines import BASELINE_STATS
from nex_transforms.errors import CorpusError, expected

#: Per-token logit statistics kept for the baselines (METHOD.md section 8): exactly the
#: ones the core's baselines read, in the core's order (the store keeps this order).
TOKEN_STAT_NAMES = BASELINE_STATS


def trace_id(model_id: str, prompt_id: str, sample_index: int) -> str:
    """The stable trace id ``model:prompt:sample`` that capture gives every response."""
    return f"{model_id}:{prompt_id}:{sample_index}"


@dataclass(frozen=True)
class SparseRows:
    """The sparse rows of one response: per row of tokens the kept ``(layer, unit)``
    entries, and the whole-response aggregate.

    Attributes:
        row_entry_ptr: int64 CSR pointer, row i owns entries ``[p[i], p[i+1])``.
        row_tokens: int64 tokens per row.
        keys, masses: uint32 packed keys ``(layer << 16) | unit`` and float32 masses.
        agg_keys, agg_masses: whole-response aggregate (sum of masses per key).
    """

    row_entry_ptr: np.ndarray
    row_tokens: np.ndarray
    keys: np.ndarray
    masses: np.ndarray
    agg_keys: np.ndarray
    agg_masses: np.ndarray

    def __post_init__(self) -> None:
        self._check_rows("sparse rows")

    def _check_rows(self, owner: str) -> None:
        ptr = np.asarray(self.row_entry_ptr)
        if ptr.ndim != 1 or ptr.size < 1 or ptr[0] != 0 or ptr[-1] != np.asarray(self.keys).size:
            raise CorpusError(expected(f"{owner} row_entry_ptr",
                                       "a pointer from 0 to the number of entries",
                                       ptr[:3] if ptr.size else ptr))
        if np.asarray(self.row_tokens).size != ptr.size - 1:
            raise CorpusError(expected(f"{owner} row_tokens",
                                       f"{ptr.size - 1} values", np.asarray(self.row_tokens).size))

    def sparse_rows(self) -> dict[str, np.ndarray]:
        """The row fields by name (what :class:`TraceRecord` takes for its rows)."""
        return {f.name: getattr(self, f.name) for f in fields(SparseRows)}

    @property
    def n_rows(self) -> int:
        return int(np.asarray(self.row_entry_ptr).size - 1)


@dataclass(frozen=True)
class TraceRecord(SparseRows):
    """One response: identity, text, its :class:`SparseRows`, per-token statistics.

    Attributes:
        row_entry_ptr, row_tokens, keys, masses, agg_keys, agg_masses: the sparse rows
            (see :class:`SparseRows`); the rows hold ``response_tokens`` tokens.
        trace_id: stable id, unique in a store (capture gives :func:`trace_id`).
        prompt_id, sample_index, model_id, model_revision: identity.
        prompt_tokens: number of prompt tokens; ``response_tokens`` = ``token_ids.size``.
        finish_reason: ``"stop"`` (EOS), ``"length"`` (max tokens) or ``"forced"``
            (teacher-forced given response).
        text: the decoded response.
        token_ids: int32 response token ids.
        token_stats: name -> float32 array of ``response_tokens`` values, names from
            :data:`TOKEN_STAT_NAMES`.
        reference_answer: optional gold answer carried from the prompt source.
    """

    trace_id: str
    prompt_id: str
    sample_index: int
    model_id: str
    model_revision: str
    prompt_tokens: int
    finish_reason: str
    text: str
    token_ids: np.ndarray
    token_stats: dict = field(default_factory=dict)
    reference_answer: str | None = None

    def __post_init__(self) -> None:
        n_tokens = int(np.asarray(self.token_ids).size)
        self._check_rows(f"trace {self.trace_id}")
        if int(np.asarray(self.row_tokens).sum()) != n_tokens:
            raise CorpusError(expected(f"trace {self.trace_id} row_tokens",
                                       f"a sum of {n_tokens} response tokens",
                                       int(np.asarray(self.row_tokens).sum())))
        for name, values in self.token_stats.items():
            if name not in TOKEN_STAT_NAMES or np.asarray(values).size != n_tokens:
                raise CorpusError(expected(f"trace {self.trace_id} token stat {name!r}",
                                           f"one of {TOKEN_STAT_NAMES} with {n_tokens} values",
                                           np.asarray(values).size))

    @property
    def response_tokens(self) -> int:
        return int(np.asarray(self.token_ids).size)
