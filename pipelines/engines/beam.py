"""The Beam engine: the core as an Apache Beam pipeline (in-process by default).

Pipeline shape::

    Create(units) -> Reshuffle -> ParDo(Analyse)  --credit-->  CombinePerKey(CreditCombineFn)
                                      |                               |-> weights (side input)
                                      |                               '-> neurons -> Parquet sink
                                      '--stats--> ParDo(Score, weights) -> responses -> Parquet sink
                                                        '-> tallies -> CombinePerKey -> models sink

Without a ``--runner`` among the pass-through options the pipeline runs on Beam's
embedded FnApiRunner in this process (``--direct_num_workers=N
--direct_running_mode=multi_processing`` spreads it over local processes); the default
Python runner would try to download a runner binary. Any other runner (Flink, Spark,
Dataflow) is chosen by the pass-through options; the store and ``--out`` must then be on
storage every worker and the launcher can reach (see ``infra/README.md``).

Errors of a unit (a missing part, a corrupt chunk) are emitted as data, not raised, so the
same one-line message comes back from any runner; the run then fails and no table is
published.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path

import numpy as np

_root_logger, _level = logging.getLogger(), logging.getLogger().level
_root_logger.setLevel(logging.ERROR)  # Beam warns at import about optional GCP clients
try:
    import apache_beam as beam
    from apache_beam.io.parquetio import WriteToParquetBatched
    from apache_beam.options.pipeline_options import (PipelineOptions, StandardOptions,
                                                      TypeOptions)
    from apache_beam.pvalue import AsDict, TaggedOutput
finally:
    _root_logger.setLevel(_level)

from nex_transforms import CreditAccumulator, NexError

from .. import tables
from ..store.reader import BatchReadError
from .analysis import analyse_unit, score_unit
from .contexts import ContextsJob, TopContexts, contexts_table, unit_contexts
from .plan import GLOBAL_KEY, EngineError, RunPlan, ScoreConfig, open_store
from .tally import ModelTally, merge_tallies, tally_responses
from .weights import SparseWeights, finalize_weights

ERRORS_DIR = "_errors"
#: Weights of a calibration key that gathered no credit at all (its GMFs are 0).
_EMPTY = SparseWeights(np.zeros(0, np.uint32), np.zeros(0, np.float32))


class AnalyseDoFn(beam.DoFn):
    """Analyse a work unit: main output its :class:`UnitResult` without credit; tagged
    outputs ``credit`` ``(key, CreditAccumulator)``, ``phases`` (tables) and ``errors``."""

    def __init__(self, config: ScoreConfig) -> None:
        self.config = config
        self.store = None

    def setup(self) -> None:
        self.store = open_store(self.config.store)  # once per worker

    def process(self, unit):
        try:
            result = analyse_unit(self.store, unit, self.config)
        except NexError as err:
            yield TaggedOutput("errors", json.dumps([unit.index, str(err)]))
            return
        for key, acc in result.credit.items():
            yield TaggedOutput("credit", (key, acc))
        if result.phases is not None:
            yield TaggedOutput("phases", tables.to_table("phases", result.phases))
        yield dataclasses.replace(result, credit={}, phases=None)


class ScoreDoFn(beam.DoFn):
    """Score an analysed unit with the broadcast weights: its response rows (a dict of
    columns) on the main output, errors tagged ``errors``."""

    def __init__(self, config: ScoreConfig, keys: list[str]) -> None:
        self.config = config
        self.keys = keys
        self.store = None

    def setup(self) -> None:
        self.store = open_store(self.config.store)

    def process(self, result, weights):
        full = {key: weights.get(key, _EMPTY) for key in self.keys}
        try:
            yield score_unit(self.store, result, full, self.config)
        except NexError as err:
            yield TaggedOutput("errors", json.dumps([result.unit.index, str(err)]))


class RecordErrorFn(beam.DoFn):
    """Write each unit error as its own small file (named by unit and a digest, so a
    retried bundle rewrites the same file); read back by the launcher after the run.

    A plain side-effect DoFn rather than a file sink: errors are rare, and a sink adds
    several stages to every run."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def process(self, error: str):
        import hashlib

        index = json.loads(error)[0]
        name = f"unit-{int(index):08d}-{hashlib.sha1(error.encode()).hexdigest()[:12]}.json"
        folder = Path(self.folder)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{name}.tmp"
        tmp.write_text(error)
        tmp.replace(folder / name)
        return []


class CreditCombineFn(beam.CombineFn):
    """:class:`CreditAccumulator` as a Beam CombineFn (inputs buffered, merged in blocks)."""

    BLOCK = 16

    def create_accumulator(self):
        return []

    def add_input(self, accumulator, element):
        accumulator.append(element)
        if len(accumulator) >= self.BLOCK:
            accumulator = [CreditAccumulator.merge_all(accumulator)]
        return accumulator

    def merge_accumulators(self, accumulators):
        return [CreditAccumulator.merge_all([a for acc in accumulators for a in acc])]

    def extract_output(self, accumulator):
        return CreditAccumulator.merge_all(accumulator)


class TallyCombineFn(beam.CombineFn):
    """:class:`ModelTally` as a Beam CombineFn: the accumulator is a list of tallies,
    merged once at the end (:meth:`ModelTally.merge_all` sorts the median values once)."""

    def create_accumulator(self):
        return []

    def add_input(self, accumulator, element):
        accumulator.append(element)
        return accumulator

    def merge_accumulators(self, accumulators):
        return [tally for acc in accumulators for tally in acc]

    def compact(self, accumulator):
        return [ModelTally.merge_all(accumulator)]

    def extract_output(self, accumulator):
        return ModelTally.merge_all(accumulator)


def _weights_entry(item, params):
    key, acc = item
    return key, finalize_weights({key: acc}, params)[key]


def _neurons_table(item, weights):
    key, acc = item
    return tables.to_table("neurons", tables.neuron_columns(key, weights[key], acc))


def _models_table(tallies, weights, config: ScoreConfig, keys: list[str]):
    full = {key: weights.get(key, _EMPTY) for key in keys}
    merged = merge_tallies([{model: tally} for model, tally in tallies])
    return tables.to_table("models", tables.model_columns(merged, full, config))


def _sink(pcoll, staging: Path, name: str, num_shards: int = 0):
    folder = tables.table_path(staging, name)
    return pcoll | f"Write {name}" >> WriteToParquetBatched(
        str(folder / "part"), schema=tables.schema(name), codec="zstd",
        file_name_suffix=".parquet", num_shards=num_shards)


def _options(pipeline_args: list[str]):
    """Pipeline options and the runner: FnApiRunner unless the options name one."""
    options = PipelineOptions(list(pipeline_args))
    runner = None
    if not options.view_as(StandardOptions).runner:
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner

        runner = FnApiRunner()
        if not any(a.startswith("--pipeline_type_check") for a in pipeline_args):
            # the transforms carry no type hints to check; saves pipeline construction time
            options.view_as(TypeOptions).pipeline_type_check = False
    return options, runner


def build(pipeline, plan: RunPlan, staging: Path) -> None:
    """Add the scoring transforms to ``pipeline`` (tables written under ``staging``)."""
    config = plan.config
    keys = sorted({config.key_of(m) for m in plan.models})
    units = (pipeline | "Units" >> beam.Create(list(plan.units), reshuffle=False)
             | "Spread" >> beam.Reshuffle())
    analysed = units | "Analyse" >> beam.ParDo(AnalyseDoFn(config)).with_outputs(
        "credit", "phases", "errors", main="results")
    if plan.fixed_weights is not None:
        weights = pipeline | "Given weights" >> beam.Create([(GLOBAL_KEY, plan.fixed_weights)])
        neurons = weights | "Neurons" >> beam.Map(
            lambda kv: tables.to_table("neurons", tables.neuron_columns(kv[0], kv[1], None)))
    else:
        credit = analysed.credit | "Merge credit" >> beam.CombinePerKey(CreditCombineFn())
        weights = credit | "Weights" >> beam.Map(_weights_entry, config.params)
        neurons = credit | "Neurons" >> beam.Map(_neurons_table, weights=AsDict(weights))
    scored = analysed.results | "Score" >> beam.ParDo(
        ScoreDoFn(config, keys), weights=AsDict(weights)).with_outputs("errors", main="rows")
    responses = scored.rows | "Responses" >> beam.Map(
        lambda rows: tables.to_table("responses", rows))
    models = (scored.rows
              | "Tally" >> beam.FlatMap(lambda rows: list(tally_responses(
                  rows, config.params.min_rows).items()))
              | "Merge tallies" >> beam.CombinePerKey(TallyCombineFn())
              | "All models" >> beam.combiners.ToList()
              | "Models" >> beam.Map(_models_table, weights=AsDict(weights), config=config,
                                     keys=keys))
    _sink(responses, staging, "responses")
    _sink(models, staging, "models", num_shards=1)
    _sink(neurons, staging, "neurons")
    if config.phases:
        _sink(analysed.phases, staging, "phases")
    errors = (analysed.errors, scored.errors) | "All errors" >> beam.Flatten()
    errors | "Record errors" >> beam.ParDo(RecordErrorFn(str(staging / ERRORS_DIR)))


def _raise_errors(staging: Path) -> None:
    """Raise the error of the lowest-numbered failed unit, if any (then remove the log)."""
    folder = staging / ERRORS_DIR
    found = []
    for path in sorted(folder.glob("unit-*.json")) if folder.is_dir() else []:
        for line in path.read_text().splitlines():
            if line.strip():
                index, message = json.loads(line)
                found.append((int(index), message))
    shutil.rmtree(folder, ignore_errors=True)
    if found:
        _, message = min(found)
        raise BatchReadError(message)


def _run_to_done(pipeline, folder: Path) -> None:
    """Run ``pipeline`` to the end: a runner failure becomes one EngineError line naming
    it, a failed unit's recorded error (under ``folder``) is raised, and any final state
    but DONE is refused."""
    try:
        state = pipeline.run().wait_until_finish()
    except NexError:
        raise
    except Exception as err:  # a runner failure: one line, naming the runner
        raise EngineError(f"beam pipeline: expected it to finish, got "
                          f"{type(err).__name__}: {' '.join(str(err).split())[:400]}") from None
    _raise_errors(folder)
    if str(state) not in ("DONE", "PipelineState.DONE"):
        raise EngineError(f"beam pipeline state: expected DONE, got {state}")


def run(plan: RunPlan, staging: Path, options: dict) -> dict:
    """Run the scoring pipeline; tables land in ``staging`` as folders of part files."""
    pipeline_args = list(options.pop("pipeline_args", []) or [])
    if options:
        raise EngineError(f"beam engine options: expected only pipeline_args, "
                          f"got {sorted(options)}")
    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    beam_options, runner = _options(pipeline_args)
    pipeline = beam.Pipeline(runner=runner, options=beam_options)
    build(pipeline, plan, staging)
    _run_to_done(pipeline, staging)
    runner_name = (beam_options.view_as(StandardOptions).runner
                   or "FnApiRunner (embedded)")
    return {"runner": runner_name, "pipeline_args": pipeline_args}


# --------------------------------------------------------------------------- contexts
class ContextsDoFn(beam.DoFn):
    """A unit's top rows per neuron (:class:`TopContexts`); errors tagged ``errors``."""

    def __init__(self, job: ContextsJob) -> None:
        self.job = job
        self.store = None

    def setup(self) -> None:
        self.store = open_store(self.job.store)

    def process(self, unit):
        try:
            yield unit_contexts(self.store, unit, self.job)
        except NexError as err:
            yield TaggedOutput("errors", json.dumps([unit.index, str(err)]))


class ContextsCombineFn(beam.CombineFn):
    """:class:`TopContexts` as a Beam CombineFn (each accumulator holds at most neurons x
    contexts rows)."""

    def __init__(self, per_neuron: int) -> None:
        self.per_neuron = per_neuron

    def create_accumulator(self):
        return TopContexts.empty(self.per_neuron)

    def add_input(self, accumulator, element):
        return accumulator.merge(element)

    def merge_accumulators(self, accumulators):
        return TopContexts.merge_all(list(accumulators))

    def extract_output(self, accumulator):
        return accumulator


def contexts(plan: RunPlan, job: ContextsJob, folder: Path, options: dict) -> dict:
    """The neuron-contexts job as a Beam pipeline (``Create(units) -> ParDo(contexts) ->
    CombineGlobally -> Parquet sink``); ``neuron_contexts.parquet`` lands in ``folder`` as a
    folder of part files."""
    pipeline_args = list(options.pop("pipeline_args", []) or [])
    if options:
        raise EngineError(f"beam engine options: expected only pipeline_args, "
                          f"got {sorted(options)}")
    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    beam_options, runner = _options(pipeline_args)
    pipeline = beam.Pipeline(runner=runner, options=beam_options)
    found = (pipeline | "Units" >> beam.Create(list(plan.units), reshuffle=False)
             | "Spread" >> beam.Reshuffle()
             | "Contexts" >> beam.ParDo(ContextsDoFn(job)).with_outputs("errors", main="found"))
    merged = found.found | "Merge" >> beam.CombineGlobally(ContextsCombineFn(job.per_neuron))
    _sink(merged | "Table" >> beam.Map(contexts_table, job), folder, "neuron_contexts",
          num_shards=1)
    found.errors | "Record errors" >> beam.ParDo(RecordErrorFn(str(folder / ERRORS_DIR)))
    _run_to_done(pipeline, folder)
    return {"runner": beam_options.view_as(StandardOptions).runner or "FnApiRunner (embedded)",
            "pipeline_args": pipeline_args}
