"""What the explorer reads: a tables folder with its phases, the store it was scored from,
and the choice of neurons and responses that get pages.

:func:`open_inputs` checks everything the site needs before anything is written: a
``nex score`` folder with a phases table, its store, and a store whose fingerprint is the
one recorded in ``run.json`` (the same traces and arrays the tables were computed from).
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nex_transforms import NexError, NexParams

from ..engines.plan import GLOBAL_KEY, EngineError, ScoreConfig, plan_run
from ..store import StoreError
from ..store.fs import is_url
from ..tables import TablesError, read_run, read_table, schema, table_path

#: Default choice of responses with a page, per model.
DEFAULT_TOP, DEFAULT_BOTTOM, DEFAULT_RANDOM = 20, 20, 20


class ExploreError(NexError):
    """The explorer cannot work from its input (no phases, an unknown trace id, a store
    that is not the one the tables were scored from, ...)."""


@dataclass
class ExploreInputs:
    """A checked tables folder and its store.

    Attributes:
        tables: the tables folder (as given).
        run: its ``run.json``.
        models: rows of the models table.
        responses: the responses table (pyarrow, sorted by trace id).
        neurons: the neurons table (pyarrow, sorted by calibration key and key).
        store: the store path (``--store`` or ``run.json``'s).
        fingerprint: the store's fingerprint, equal to ``run.json``'s.
        params: the method parameters of the run.
        per_model: per-model calibration (a model's neurons are its own).
    """

    tables: str
    run: dict
    models: list
    responses: object
    neurons: object
    store: str
    fingerprint: str
    params: NexParams
    per_model: bool

    def key_of(self, model_id: str) -> str:
        """The calibration key of a model's traces (its id, or ``*``)."""
        return model_id if self.per_model else GLOBAL_KEY

    def phases_of(self, trace_ids) -> dict:
        """``trace id -> rows of the phases table`` (sorted by row) for ``trace_ids``,
        read with a filter (the table has a row per analysed row of the corpus)."""
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.dataset as ds

        wanted = pa.array(sorted(set(map(str, trace_ids))), pa.string())
        if is_url(self.tables):
            table = read_table(self.tables, "phases")
            table = table.filter(pc.is_in(table["trace_id"], value_set=wanted))
        else:
            path = table_path(self.tables, "phases")
            files = sorted(str(f) for f in path.rglob("*.parquet")) if path.is_dir() \
                else [str(path)]
            table = ds.dataset(files, schema=schema("phases"), format="parquet").to_table(
                filter=pc.field("trace_id").isin(wanted))
        table = table.sort_by([("trace_id", "ascending"), ("row", "ascending")])
        out: dict[str, list] = {str(t): [] for t in wanted.to_pylist()}
        for row in table.to_pylist():
            out[row["trace_id"]].append(row)
        return out


def open_inputs(tables: str | Path, store: str | None = None) -> ExploreInputs:
    """Read and check a tables folder for the explorer (see the module docstring)."""
    tables = str(tables)
    try:
        run = read_run(tables)
    except TablesError as err:
        raise ExploreError(f"tables folder {tables}: expected a `nex score` output folder with "
                           f"run.json, got {err}") from None
    present = run.get("tables") or []
    if "phases" not in present or not (is_url(tables)
                                       or table_path(tables, "phases").exists()):
        raise ExploreError(f"tables folder {tables}: expected a phases table (score with "
                           "`nex score --phases`), got none")
    store = store or (run.get("store") or {}).get("path")
    if not store:
        raise ExploreError(f"tables folder {tables}: expected run.json to name its store (or "
                           "--store), got none")
    try:
        plan = plan_run(ScoreConfig(store=store))
    except (StoreError, EngineError) as err:
        raise ExploreError(f"store {store}: expected the activation store the tables were "
                           f"scored from, got {err}") from None
    recorded = run.get("store_fingerprint")
    if plan.fingerprint != recorded:
        raise ExploreError(f"store {store}: expected the store the tables were scored from "
                           f"(fingerprint {str(recorded)[:23]}...), got fingerprint "
                           f"{plan.fingerprint[:23]}... (another store, or one changed since)")
    try:
        responses = read_table(tables, "responses")
        neurons = read_table(tables, "neurons")
        models = read_table(tables, "models").to_pylist()
    except (TablesError, OSError, ValueError) as err:
        raise ExploreError(f"tables folder {tables}: expected readable tables, got {err}") \
            from None
    return ExploreInputs(tables=tables, run=run, models=models, responses=responses,
                         neurons=neurons, store=plan.config.store, fingerprint=plan.fingerprint,
                         params=NexParams.from_dict(run.get("params") or {}),
                         per_model=run.get("calibration", "per-model") == "per-model")


# --------------------------------------------------------------------------- neurons
def neuron_arrays(neurons) -> dict:
    """``calibration key -> {column: numpy array}`` of a neurons table (keys ascending
    within a key, as :func:`~pipelines.tables.read_table` sorts them), one key at a time
    through pyarrow (the table may hold millions of credited neurons)."""
    import pyarrow.compute as pc

    out = {}
    for calibration in sorted(pc.unique(neurons["model_id"]).to_pylist()):
        part = neurons.filter(pc.equal(neurons["model_id"], calibration))
        out[calibration] = {name: part[name].to_numpy(zero_copy_only=False).astype(dtype)
                            for name, dtype in (("key", np.int64), ("layer", np.int64),
                                                ("unit", np.int64), ("eff", np.float64),
                                                ("red", np.float64), ("weight", np.float64))}
    return out


def select_neurons(neurons, per_sign: int) -> list[dict]:
    """The weighted neurons that get a page: per calibration key, the ``per_sign`` largest
    positive weights and the ``per_sign`` most negative ones.

    Ties in weight (weights saturate near +-1) go to the larger credit of the neuron's sign
    (Effective for positive, Redundant for negative), then to the smaller key. Returns rows
    of the neurons table with ``sign`` (+1/-1) and ``sign_rank`` (1 = strongest), sorted by
    calibration key and key.
    """
    if isinstance(per_sign, bool) or not isinstance(per_sign, int) or per_sign < 0:
        raise ExploreError(f"--neurons: expected an integer >= 0, got {per_sign!r}")
    chosen = []
    for calibration, columns in neuron_arrays(neurons).items():
        key, weight = columns["key"], columns["weight"]
        for sign, credit in ((1, np.nan_to_num(columns["eff"])),
                             (-1, np.nan_to_num(columns["red"]))):
            pick = np.flatnonzero(sign * weight > 0)
            order = np.lexsort((key[pick], -credit[pick], -sign * weight[pick]))
            for rank, i in enumerate(pick[order][:per_sign], 1):
                row = {name: values[i].item() for name, values in columns.items()}
                chosen.append({**row, "model_id": calibration, "sign": sign,
                               "sign_rank": rank})
    return sorted(chosen, key=lambda r: (r["model_id"], r["key"]))


# --------------------------------------------------------------------------- responses
def _stable_seed(seed: int, text: str) -> list[int]:
    return [int(seed), zlib.crc32(text.encode())]


def select_responses(responses, top: int, bottom: int, random: int, seed: int) -> dict:
    """Per model the responses that get a page: the ``top`` highest and ``bottom`` lowest
    finite GMFs (ties by trace id) and ``random`` others drawn with ``seed``.

    Returns ``trace id -> list of reasons`` (``highest GMF``, ``lowest GMF``, ``random``).
    """
    for name, value in (("--top", top), ("--bottom", bottom), ("--random", random)):
        if value < 0:
            raise ExploreError(f"{name}: expected an integer >= 0, got {value}")
    columns = responses.select(["trace_id", "model_id", "gmf"]).to_pydict()
    ids = np.asarray(columns["trace_id"], dtype=object)
    model = np.asarray(columns["model_id"], dtype=object)
    gmf = np.asarray([np.nan if g is None else g for g in columns["gmf"]], np.float64)
    reasons: dict[str, list[str]] = {}
    for name in sorted(set(model.tolist())):
        member = np.flatnonzero(model == name)
        member = member[np.argsort(ids[member].astype(str), kind="stable")]
        scored = member[np.isfinite(gmf[member])]
        high = scored[np.argsort(-gmf[scored], kind="stable")][:top]
        low = scored[np.argsort(gmf[scored], kind="stable")][:bottom]
        for group, label in ((high, "highest GMF"), (low, "lowest GMF")):
            for i in group:
                reasons.setdefault(str(ids[i]), []).append(label)
        rest = np.asarray([i for i in member if str(ids[i]) not in reasons], np.int64)
        if rest.size and random:
            rng = np.random.default_rng(_stable_seed(seed, name))
            for i in rng.choice(rest, size=min(random, rest.size), replace=False):
                reasons.setdefault(str(ids[i]), []).append("random")
    return reasons


def check_trace_ids(responses, trace_ids, tables: str) -> list[str]:
    """``trace_ids`` (as strings, duplicates dropped), each a response of the tables."""
    known = set(responses["trace_id"].to_pylist())
    wanted = list(dict.fromkeys(str(t) for t in trace_ids))
    unknown = [t for t in wanted if t not in known]
    if unknown:
        more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
        raise ExploreError(f"trace id: expected a response of the tables folder {tables}, "
                           f"got unknown {unknown[0]!r}{more}")
    return wanted


def sample_table_rows(responses, model_id: str, limit: int, with_page: set, seed: int):
    """Row positions (in the responses table) of the responses a model's index table shows:
    every response when there are at most ``limit``; otherwise every one in ``with_page``
    and a seeded random sample of the others, ``limit`` in all. Returns ``(positions,
    n_responses)``, positions sorted by GMF (descending, NaN last) then trace id."""
    columns = responses.select(["trace_id", "model_id", "gmf"]).to_pydict()
    model = np.asarray(columns["model_id"], dtype=object)
    ids = np.asarray(columns["trace_id"], dtype=object)
    member = np.flatnonzero(model == model_id)
    if member.size > limit:
        paged = np.asarray([i for i in member if ids[i] in with_page], np.int64)
        others = np.asarray([i for i in member if ids[i] not in with_page], np.int64)
        room = max(limit - paged.size, 0)
        rng = np.random.default_rng(_stable_seed(seed + 1, model_id))
        drawn = rng.choice(others, size=min(room, others.size), replace=False) \
            if others.size and room else np.zeros(0, np.int64)
        chosen = np.concatenate([paged, np.asarray(drawn, np.int64)])
    else:
        chosen = member
    gmf = np.asarray([np.nan if columns["gmf"][i] is None else columns["gmf"][i]
                      for i in chosen], np.float64)
    key = np.where(np.isfinite(gmf), -gmf, math.inf)
    order = np.lexsort((ids[chosen].astype(str), key))
    return chosen[order].astype(np.int64), int(member.size)


__all__ = ["DEFAULT_BOTTOM", "DEFAULT_RANDOM", "DEFAULT_TOP", "ExploreError", "ExploreInputs",
           "check_trace_ids", "neuron_arrays", "open_inputs", "sample_table_rows", "select_neurons",
           "select_responses"]
