"""What a response page shows, read from the store and the tables.

:func:`response_details` reads the selected traces through the store's checked reader
(rows, token ids, manifest text), runs the core analysis on them (per trace, so it gives
the engines' labels; checked against the phases table) and collects, per row, its text,
novelty, E/X label and cycle, and per credited cycle the neurons its E rows introduced
(the neurons that cycle credited, METHOD.md section 4), largest first-row mass first.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from nex_transforms import analyse
from nex_transforms.baselines import BASELINES
from nex_transforms.params import UNIT_BITS

from ..store import ActivationStore
from ..store.reader import read_selection, read_token_ids
from .inputs import ExploreError, ExploreInputs, neuron_arrays
from .text import Detokenizer, PromptTexts

#: Credited neurons listed per credited cycle.
NEURONS_PER_CYCLE = 12
#: Numbers of a response shown in its header and in the index table (responses columns).
RESPONSE_NUMBERS = ("gmf", "n_rows", "n_kept_rows", "n_explore_rows", "n_cycles",
                    "n_effective_cycles", "n_redundant_cycles", "response_tokens", *BASELINES)


@dataclass
class ResponseDetail:
    """Everything a response page shows.

    ``rows``: one dict per row of the response (``row``, ``token_start``, ``token_stop``,
    ``text``, ``label`` ``E``/``X`` or None when the row was not analysed, ``slope``,
    ``z``, ``cycle`` (-1: none), ``credited``, ``effective``). ``cycles``: one dict per
    cycle (``cycle``, ``first``, ``last`` rows, ``credited``, ``effective``, ``neurons``:
    the credited neurons, and ``n_neurons``).
    """

    trace_id: str
    model_id: str
    calibration_key: str
    prompt_id: str
    sample_index: int
    numbers: dict
    text: str
    finish_reason: str | None
    reference_answer: str | None
    rows: list
    cycles: list
    prompt: str | None = None
    notes: list = field(default_factory=list)
    grade: dict | None = None
    token_ids: np.ndarray | None = None


def _manifest_rows(store, trace_ids: list[str]):
    import pyarrow as pa
    import pyarrow.compute as pc

    table = store.manifest()
    wanted = pa.array(sorted(set(trace_ids)), pa.string())
    return table.filter(pc.is_in(table["trace_id"], value_set=wanted))


def read_token_ids_of(store_path: str, trace_ids: list[str]) -> dict:
    """``trace id -> int32 token ids`` of the given traces (checked reader)."""
    store = ActivationStore.open(store_path)
    table = _manifest_rows(store, trace_ids)
    ptr, ids = read_token_ids(store, table)
    names = table["trace_id"].to_pylist()
    return {t: ids[ptr[i]:ptr[i + 1]] for i, t in enumerate(names)}


def weight_of(columns: dict | None, keys: np.ndarray) -> np.ndarray:
    """Weights of ``keys`` from one calibration key's :func:`~.inputs.neuron_arrays`
    (0 for a key the neurons table does not list: never credited)."""
    keys = np.asarray(keys, np.int64)
    if columns is None or columns["key"].size == 0:
        return np.zeros(keys.size)
    position = np.minimum(np.searchsorted(columns["key"], keys), columns["key"].size - 1)
    return np.where(columns["key"][position] == keys, columns["weight"][position], 0.0)


def response_details(inputs: ExploreInputs, trace_ids: list[str], detokenizers: dict,
                     prompts: PromptTexts, grades: dict | None = None) -> dict:
    """``trace id -> ResponseDetail`` of ``trace_ids`` (responses of the tables).

    ``detokenizers``: model id -> :class:`~.text.Detokenizer` (a missing model: token
    ids shown). ``grades``: trace id -> grade row, when known.
    """
    if not trace_ids:
        return {}
    store = ActivationStore.open(inputs.store)
    table = _manifest_rows(store, trace_ids)
    corpus, _ = read_selection(store, table, token_stats=False)
    token_ptr, token_ids = read_token_ids(store, table)
    manifest = table.to_pydict()
    ids = manifest["trace_id"]
    responses = inputs.responses
    import pyarrow as pa
    import pyarrow.compute as pc

    picked = responses.filter(pc.is_in(responses["trace_id"],
                                       value_set=pa.array(sorted(set(ids)), pa.string())))
    numbers = {r["trace_id"]: r for r in picked.to_pylist()}
    phases = inputs.phases_of(ids)
    weights = neuron_arrays(inputs.neurons)
    analysis = analyse(corpus, inputs.params)
    rows_kept = analysis.rows
    credit = analysis.credit
    first_cycle = np.concatenate([[0], np.cumsum(credit.trace_cycles)])
    out = {}
    for t, trace_id in enumerate(ids):
        model = manifest["model_id"][t]
        detok = detokenizers.get(model) or Detokenizer(None)
        tokens = token_ids[token_ptr[t]:token_ptr[t + 1]]
        r0, r1 = int(corpus.trace_row_ptr[t]), int(corpus.trace_row_ptr[t + 1])
        spans = np.concatenate([[0], np.cumsum(corpus.row_tokens[r0:r1])]).astype(np.int64)
        rows = [{"row": r, "token_start": int(spans[r]), "token_stop": int(spans[r + 1]),
                 "text": detok.span(tokens, int(spans[r]), int(spans[r + 1])),
                 "label": None, "slope": None, "z": None, "cycle": -1, "credited": False,
                 "effective": False} for r in range(r1 - r0)]
        k0, k1 = int(rows_kept.trace_ptr[t]), int(rows_kept.trace_ptr[t + 1])
        cycles: dict[int, dict] = {}
        for k in range(k0, k1):
            local = int(rows_kept.row_index[k]) - r0
            global_cycle = int(credit.row_cycle[k])
            cycle = global_cycle - int(first_cycle[t]) if global_cycle >= 0 else -1
            entry = rows[local]
            entry.update(label="E" if analysis.segmentation.explore[k] else "X",
                         slope=float(analysis.novelty.slopes[k]),
                         z=float(analysis.segmentation.z[k]), cycle=cycle)
            if cycle >= 0:
                entry["credited"] = bool(credit.cycle_credited[global_cycle])
                entry["effective"] = bool(credit.cycle_effective[global_cycle])
                info = cycles.setdefault(cycle, {"cycle": cycle, "first": local, "last": local,
                                                 "credited": entry["credited"],
                                                 "effective": entry["effective"],
                                                 "entries": []})
                info["last"] = local
                if entry["label"] == "E" and entry["credited"]:
                    a, b = int(rows_kept.entry_ptr[k]), int(rows_kept.entry_ptr[k + 1])
                    new = np.flatnonzero(analysis.novelty.is_new[a:b]) + a
                    info["entries"].append((rows_kept.keys[new], rows_kept.masses[new], local))
        _check_phases(trace_id, rows, phases.get(trace_id, []), inputs)
        key = inputs.key_of(model)
        cycle_list = [_cycle_neurons(c, weights.get(key)) for _, c in sorted(cycles.items())]
        notes = [] if detok.available else [
            "row text needs the model's tokenizer (nex explore --tokenizer PATH): token ids "
            "are shown"]
        if prompts.note:
            notes.append(prompts.note)
        out[trace_id] = ResponseDetail(
            trace_id=trace_id, model_id=model, calibration_key=key,
            prompt_id=manifest["prompt_id"][t], sample_index=int(manifest["sample_index"][t]),
            numbers={k: numbers[trace_id].get(k) for k in numbers[trace_id]},
            text=manifest["text"][t] if "text" in manifest else "",
            finish_reason=manifest.get("finish_reason", [None] * len(ids))[t],
            reference_answer=manifest.get("reference_answer", [None] * len(ids))[t],
            rows=rows, cycles=cycle_list, prompt=prompts.by_trace.get(trace_id), notes=notes,
            grade=(grades or {}).get(trace_id), token_ids=tokens)
    return out


def _cycle_neurons(info: dict, weights: dict | None) -> dict:
    """A cycle's summary with its credited neurons (largest first-row mass first, then
    key), at most :data:`NEURONS_PER_CYCLE` of them listed."""
    entries = info.pop("entries")
    neurons = []
    if entries:
        keys = np.concatenate([e[0] for e in entries]).astype(np.int64)
        masses = np.concatenate([e[1] for e in entries])
        rows = np.concatenate([np.full(e[0].size, e[2], np.int64) for e in entries])
        order = np.lexsort((keys, -masses))[:NEURONS_PER_CYCLE]
        for i, weight in zip(order, weight_of(weights, keys[order])):
            neurons.append({"key": int(keys[i]), "layer": int(keys[i]) >> UNIT_BITS,
                            "unit": int(keys[i]) & ((1 << UNIT_BITS) - 1),
                            "mass": float(masses[i]), "row": int(rows[i]),
                            "weight": float(weight)})
        info["n_neurons"] = int(keys.size)
    else:
        info["n_neurons"] = 0
    info["neurons"] = neurons
    return info


def _check_phases(trace_id: str, rows: list, phases: list, inputs: ExploreInputs) -> None:
    """The analysis of the store's rows must give the tables' phases (the fingerprint
    already says the store is the same; this also catches other parameters)."""
    mine = [(r["row"], r["label"], r["cycle"], r["credited"]) for r in rows if r["label"]]
    theirs = [(p["row"], p["label"], -1 if p["cycle"] is None else p["cycle"],
               bool(p["credited"])) for p in phases]
    if any(p["cycle"] is None for p in phases):  # tables before cycle/credited columns
        mine = [m[:2] for m in mine]
        theirs = [t[:2] for t in theirs]
    if mine != theirs:
        raise ExploreError(f"tables folder {inputs.tables} phases of trace {trace_id}: expected "
                           "what the store's rows give with the run's parameters, got other "
                           "rows or labels (tables and store do not belong together)")


__all__ = ["NEURONS_PER_CYCLE", "RESPONSE_NUMBERS", "ResponseDetail", "read_token_ids_of",
           "response_details"]
