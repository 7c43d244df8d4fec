"""Compatibility names for the engine-independent core of ``nex score``.

The core is split by job; import from the module that does the job:

* :mod:`pipelines.engines.plan`: :class:`ScoreConfig`, :func:`plan_run`, work units;
* :mod:`pipelines.engines.analysis`: :func:`analyse_unit`, :func:`merge_credit`,
  :func:`score_unit`, :func:`write_results`;
* :mod:`pipelines.engines.weights`: :class:`SparseWeights`, the dense weights cache;
* :mod:`pipelines.engines.tally`: :class:`ModelTally` (the models table's sums);
* :mod:`pipelines.store.reader`: the checked reader (:func:`read_unit`);
* :mod:`nex_transforms.baselines`: the per-response baselines (pure numpy);
* :mod:`pipelines.tables`: table columns and schemas.

This module only re-exports those names so older imports keep working.
"""

from __future__ import annotations

from nex_transforms.baselines import (BASELINES, DEEPCONF_WINDOW, lowest_group_means,
                                      response_baselines)

from ..store.reader import UNIT_COLUMNS, BatchReadError, WorkUnit, read_unit
from ..tables import concat_columns, model_columns, neuron_columns
from .analysis import (UnitResult, analyse_unit, merge_credit, plan_weights, score_unit,
                       write_results)
from .plan import (CALIBRATIONS, DEFAULT_BATCH_ENTRIES, GLOBAL_KEY, EngineError, RunPlan,
                   ScoreConfig, calibration_keys, open_store, plan_run)
from .tally import ModelTally, merge_tallies, tally_responses
from .weights import SparseWeights, dense_weights, finalize_weights, weights_for_keys

__all__ = [
    "BASELINES", "BatchReadError", "CALIBRATIONS", "DEEPCONF_WINDOW", "DEFAULT_BATCH_ENTRIES",
    "EngineError", "GLOBAL_KEY", "ModelTally", "RunPlan", "ScoreConfig", "SparseWeights",
    "UNIT_COLUMNS", "UnitResult", "WorkUnit", "analyse_unit", "calibration_keys",
    "concat_columns", "dense_weights", "finalize_weights", "lowest_group_means",
    "merge_credit", "merge_tallies", "model_columns", "neuron_columns", "open_store",
    "plan_run", "plan_weights", "read_unit", "response_baselines", "score_unit",
    "tally_responses", "weights_for_keys", "write_results",
]
