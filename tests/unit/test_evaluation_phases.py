"""The phases table's ``cycle``/``credited`` columns against the core's own cycle credit,
and the phase plots and examples that use them."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import given, settings
from hypothesis import strategies as st

from nex_transforms import RowCorpus, analyse
from pipelines import tables
from pipelines.testing.corpora import SyntheticSpec, synthetic_corpus
from pipelines.evaluation.evaluate import phase_examples
from pipelines.evaluation.plots import cycle_spans, example_cycles
from pipelines.rows_cache import read_rows_cache

ROWS_PER_TRACE = 12


def three_cycle_corpus(n_traces: int = 2) -> RowCorpus:
    """Traces of 12 rows of 4 tokens, built so the core labels them EExx EExx EExx:
    each E row brings 4 new keys (novelty slope 1), X rows bring none (slope 0).
    Cycle 0's X rows reuse only its own E keys (reuse 1), cycle 1's only older keys
    (reuse 0), cycle 2's half and half (reuse 0.5 = the response's median): progress
    +0.5, -0.5 and 0, so exactly cycles 0 (effective) and 1 (redundant) earn credit."""
    rows: list[list[int]] = []
    pointer = [0]
    for trace in range(n_traces):
        base = 1000 * (trace + 1)

        def new(cycle: int, row: int) -> list[int]:
            return [base + 100 * cycle + 10 * row + k for k in range(4)]

        e = {c: new(c, 0) + new(c, 1) for c in range(3)}
        rows += [new(0, 0), new(0, 1), e[0][:4], e[0][4:]]
        rows += [new(1, 0), new(1, 1), e[0][:4], e[0][4:]]
        rows += [new(2, 0), new(2, 1), e[2][:2] + e[0][:2], e[2][2:4] + e[0][2:4]]
        pointer.append(len(rows))
    keys = np.concatenate(rows).astype(np.uint32)
    return RowCorpus(np.asarray(pointer), np.cumsum([0] + [len(r) for r in rows]),
                     np.full(len(rows), 4), keys, np.ones(keys.size))


def phases_of(corpus: RowCorpus, analysis) -> dict:
    n = corpus.n_traces
    part = tables.phase_part(np.arange(n), corpus.trace_row_ptr, analysis)
    return tables.phase_columns([f"t{i}" for i in range(n)], ["m"] * n, [part])


def test_exactly_the_known_cycles_are_credited():
    corpus = three_cycle_corpus()
    analysis = analyse(corpus)
    assert analysis.labels(0) == analysis.labels(1) == "EExxEExxEExx"
    columns = phases_of(corpus, analysis)
    assert columns["trace_id"] == ["t0"] * ROWS_PER_TRACE + ["t1"] * ROWS_PER_TRACE
    # per response, cycles numbered from 0; cycles 0 and 1 credited, cycle 2 not
    assert columns["cycle"].tolist() == [0] * 4 + [1] * 4 + [2] * 4 + [0] * 4 + [1] * 4 + [2] * 4
    assert columns["credited"].tolist() == ([True] * 8 + [False] * 4) * 2
    credit = analysis.credit
    assert credit.trace_effective.tolist() == [1, 1] and credit.trace_redundant.tolist() == [1, 1]
    table = tables.to_table("phases", columns)
    assert table.schema.field("credited").type == pa.bool_()


def core_row_credit(analysis) -> tuple[np.ndarray, np.ndarray]:
    """Per kept row: cycle within its trace and credited flag, from the core's arrays by a
    plain loop (row by row, counting cycles per trace)."""
    credit = analysis.credit
    row_trace = analysis.rows.row_trace()
    cycles, flags = [], []
    for r, global_cycle in enumerate(credit.row_cycle):
        if global_cycle < 0:
            cycles.append(-1)
            flags.append(False)
            continue
        earlier = int(credit.trace_cycles[:row_trace[r]].sum())
        cycles.append(int(global_cycle) - earlier)
        flags.append(bool(credit.cycle_credited[global_cycle]))
    return np.asarray(cycles), np.asarray(flags)


def test_reference_example_columns_agree_with_the_core(reference_dir):
    corpus = read_rows_cache(reference_dir / "example_cache")
    analysis = analyse(corpus)
    columns = phases_of(corpus, analysis)
    cycles, flags = core_row_credit(analysis)
    np.testing.assert_array_equal(columns["cycle"], cycles)
    np.testing.assert_array_equal(columns["credited"], flags)
    labels = analysis.labels(0).replace("x", "X")
    assert "".join(columns["label"]) == labels
    # the cycles are the label string's E->X runs (an independent reading of the labels)
    spans = cycle_spans(labels)
    assert len(spans) == int(analysis.credit.trace_cycles[0]) == 4
    expected = np.full(len(labels), -1)
    for number, (start, _, stop) in enumerate(spans):
        expected[start:stop] = number
    np.testing.assert_array_equal(columns["cycle"], expected)
    credited_cycles = {int(c) for c, f in zip(columns["cycle"], columns["credited"]) if f}
    c = analysis.credit
    assert len(credited_cycles) == int(c.trace_effective[0] + c.trace_redundant[0])
    assert not columns["credited"][columns["cycle"] < 0].any()


def test_phases_tables_without_the_columns_still_read(tmp_path):
    """A schema-1 phases table (no cycle/credited) reads with nulls there, and the
    evaluation's examples say credit was not recorded."""
    old = pa.table({"trace_id": ["t"] * 4, "model_id": ["m"] * 4, "row": [0, 1, 2, 3],
                    "novelty_slope": [1.0, 1.0, 0.0, 0.0], "z": [1.0, 1.0, -1.0, -1.0],
                    "label": ["E", "E", "X", "X"]})
    pq.write_table(old, tmp_path / "phases.parquet")
    back = tables.read_table(tmp_path, "phases")
    assert back["cycle"].null_count == 4 and back["credited"].null_count == 4
    rows = [{**r, "model": "m"} for r in back.to_pylist()]
    data = {"trace_id": np.array(["t"], object), "n_cycles": np.array([1.0]),
            "n_effective_cycles": np.array([0.0]), "n_redundant_cycles": np.array([0.0]),
            "gmf": np.array([0.5]), "correct": np.array([True], object),
            "status": np.array(["graded"], object)}
    (example,) = phase_examples(rows, data, "m")
    assert example["cycle"] is None and example["credited_cycles"] is None
    assert example_cycles(example) == [(0, 3, None)]


def test_examples_with_credited_cycles_come_first_and_plot():
    corpus = three_cycle_corpus(1)
    columns = phases_of(corpus, analyse(corpus))
    rows = [dict(zip(columns, values), model="m") for values in zip(*columns.values())]
    # a second response with more cycles but none credited
    for r in range(16):
        rows.append({"trace_id": "u", "model_id": "m", "model": "m", "row": r,
                     "novelty_slope": float(r % 4 < 2), "z": 0.0,
                     "label": "E" if r % 4 < 2 else "X", "cycle": r // 4, "credited": False})
    data = {"trace_id": np.array(["t0", "u"], object), "n_cycles": np.array([3.0, 4.0]),
            "n_effective_cycles": np.array([1.0, 0.0]),
            "n_redundant_cycles": np.array([1.0, 0.0]), "gmf": np.array([0.5, 0.1]),
            "correct": np.array([True, False], object),
            "status": np.array(["graded", "graded"], object)}
    examples = phase_examples(rows, data, "m")
    assert [e["trace_id"] for e in examples] == ["t0", "u"]
    assert examples[0]["credited_cycles"] == [0, 1] and examples[1]["credited_cycles"] == []
    assert example_cycles(examples[0]) == [(0, 3, True), (4, 7, True), (8, 11, False)]
    assert phase_examples(rows, data, "m", limit=1)[0]["trace_id"] == "t0"


def test_phase_plot_has_a_legend_for_credited_and_uncredited_cycles(tmp_path):
    from pipelines.evaluation import plots

    corpus = three_cycle_corpus(1)
    columns = phases_of(corpus, analyse(corpus))
    example = {"trace_id": "t0", "row": columns["row"].tolist(),
               "novelty_slope": columns["novelty_slope"].tolist(),
               "label": "".join(columns["label"]), "cycle": columns["cycle"].tolist(),
               "credited": columns["credited"].tolist(), "credited_cycles": [0, 1],
               "n_cycles": 3, "n_effective_cycles": 1, "n_redundant_cycles": 1, "gmf": 0.5,
               "correct": True, "status": "graded"}
    assert plots.phase_legend([example]) == ["novelty slope", "E rows", "credited cycle",
                                             "uncredited cycle"]
    old = {**example, "cycle": None, "credited": None, "credited_cycles": None}
    assert plots.phase_legend([old])[2:] == ["cycle (credit not recorded in these tables)"]
    path = plots.plot_phases("m", [example, old], tmp_path / "phases.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10**6), n_traces=st.integers(1, 12))
def test_columns_agree_with_the_core_counts_on_any_corpus(seed, n_traces):
    """Per response: the cycles in the columns are the core's trace_cycles, the credited
    ones its trace_effective + trace_redundant; cycles are consecutive runs of rows."""
    corpus = synthetic_corpus(SyntheticSpec(n_traces=n_traces, min_rows=2, max_rows=60,
                                            keys_per_row=40, seed=seed))
    analysis = analyse(corpus)
    columns = phases_of(corpus, analysis)
    cycles, flags = core_row_credit(analysis)
    np.testing.assert_array_equal(columns["cycle"], cycles)
    np.testing.assert_array_equal(columns["credited"], flags)
    credit = analysis.credit
    trace_ids = np.asarray(columns["trace_id"], dtype=object)
    for t in range(n_traces):
        mine = trace_ids == f"t{t}"
        cycle, credited = columns["cycle"][mine], columns["credited"][mine]
        present = sorted(set(cycle[cycle >= 0].tolist()))
        assert present == list(range(int(credit.trace_cycles[t])))
        assert len(set(cycle[credited].tolist())) == int(credit.trace_effective[t]
                                                        + credit.trace_redundant[t])
        # each cycle is one contiguous block of rows, and its rows agree on credit
        for c in present:
            where = np.flatnonzero(cycle == c)
            assert where[-1] - where[0] + 1 == where.size
            assert len(set(credited[where].tolist())) == 1
