"""The neuron-contexts step and its mergeable value, on hand-built rows (no store)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nex_transforms import RowCorpus
from nex_transforms.params import UNIT_BITS
from pipelines.engines.contexts import ContextsJob, TopContexts, corpus_contexts
from pipelines.engines.plan import EngineError


def key(layer: int, unit: int) -> int:
    return (layer << UNIT_BITS) | unit


A, B, C = key(1, 5), key(2, 7), key(3, 9)


def corpus_of(traces: list[list[list[tuple[int, float]]]], tokens: int = 4) -> RowCorpus:
    """A corpus from traces of rows of (key, mass) entries, every row ``tokens`` long."""
    keys, masses, entry_ptr, trace_ptr = [], [], [0], [0]
    for rows in traces:
        for row in rows:
            keys += [k for k, _ in row]
            masses += [m for _, m in row]
            entry_ptr.append(len(keys))
        trace_ptr.append(len(entry_ptr) - 1)
    n_rows = len(entry_ptr) - 1
    return RowCorpus(np.asarray(trace_ptr, np.int64), np.asarray(entry_ptr, np.int64),
                     np.full(n_rows, tokens, np.int64), np.asarray(keys, np.uint32),
                     np.asarray(masses, np.float32))


def as_rows(value: TopContexts, job: ContextsJob) -> list[tuple]:
    columns = value.columns(job)
    return list(zip(columns["model_id"], columns["key"].tolist(), columns["rank"].tolist(),
                    columns["trace_id"], columns["row"].tolist(), columns["mass"].tolist(),
                    columns["token_start"].tolist(), columns["token_stop"].tolist()))


def test_top_rows_per_neuron_are_the_known_ones():
    """Trace t1's row 1 holds A twice (masses add up); NaN and negative masses count as 0
    and such rows never appear; equal masses go to the smaller trace id, then row."""
    corpus = corpus_of([
        [[(A, 1.0), (B, 0.5)], [(A, 3.0)], [(C, 2.0)]],                  # t0
        [[(B, 0.5)], [(A, 2.0), (A, 1.5)], [(A, float("nan")), (C, -1)]],  # t1
        [[(A, 3.0), (B, 9.0)], [(255 << UNIT_BITS, 50.0), (B, 0.5)]],     # t2 (other model)
    ])
    job = ContextsJob(store="s", neurons=(("m", A), ("m", B), ("m", C)), per_neuron=2)
    value = corpus_contexts(corpus, ["t0", "t1", "t2"], ["m", "m", "other"], job)
    assert as_rows(value, job) == [
        ("m", A, 1, "t1", 1, 3.5, 4, 8),
        ("m", A, 2, "t0", 1, 3.0, 4, 8),
        ("m", B, 1, "t0", 0, 0.5, 0, 4),
        ("m", B, 2, "t1", 0, 0.5, 0, 4),
        ("m", C, 1, "t0", 2, 2.0, 8, 12),
    ]
    # with global calibration every trace counts, under the key "*"
    glob = ContextsJob(store="s", neurons=(("*", A), ("*", B)), per_model=False, per_neuron=1)
    value = corpus_contexts(corpus, ["t0", "t1", "t2"], ["*"] * 3, glob)
    assert as_rows(value, glob) == [("*", A, 1, "t1", 1, 3.5, 4, 8),
                                    ("*", B, 1, "t2", 0, 9.0, 0, 4)]


def test_token_spans_follow_the_rows_token_counts():
    corpus = RowCorpus(np.array([0, 3]), np.array([0, 1, 2, 3]), np.array([5, 2, 7]),
                       np.array([A, A, A], np.uint32), np.array([1.0, 3.0, 2.0], np.float32))
    job = ContextsJob(store="s", neurons=(("m", A),), per_neuron=3)
    value = corpus_contexts(corpus, ["t"], ["m"], job)
    assert [(r[4], r[6], r[7]) for r in as_rows(value, job)] == [(1, 5, 7), (2, 7, 14),
                                                                 (0, 0, 5)]


candidates = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 6), st.integers(0, 5),
                                st.sampled_from([0.5, 1.0, 2.0, 3.0])),
                      max_size=60, unique_by=lambda c: (c[0], c[1], c[2]))


@settings(max_examples=60, deadline=None)
@given(candidates, st.integers(1, 4), st.randoms(use_true_random=False))
def test_merging_in_any_split_and_order_gives_the_top_of_all(items, per_neuron, rnd):
    """The value is a commutative monoid: any split of the candidates, merged in any order
    and any tree, gives the top ``per_neuron`` of all of them."""
    def value_of(group):
        if not group:
            return TopContexts.empty(per_neuron)
        n, t, r, m = zip(*group)
        return TopContexts.top(per_neuron, n, m, [f"t{x}" for x in t], r, r, np.add(r, 1))
    expected = sorted(items, key=lambda c: (c[0], -c[3], f"t{c[1]}", c[2]))
    kept, seen = [], {}
    for c in expected:
        seen[c[0]] = seen.get(c[0], 0) + 1
        if seen[c[0]] <= per_neuron:
            kept.append(c)
    shuffled = list(items)
    rnd.shuffle(shuffled)
    cuts = sorted(rnd.sample(range(len(shuffled) + 1), k=min(3, len(shuffled) + 1)))
    parts = [value_of(shuffled[a:b]) for a, b in zip([0] + cuts, cuts + [len(shuffled)])]
    rnd.shuffle(parts)
    merged = parts[0]
    for part in parts[1:]:
        merged = part.merge(merged) if rnd.random() < 0.5 else merged.merge(part)
    assert list(zip(merged.neuron.tolist(), [int(t[1:]) for t in merged.trace_id.tolist()],
                    merged.row.tolist(), merged.mass.tolist())) == \
        [(n, t, r, m) for n, t, r, m in kept]
    assert len(merged) <= 4 * per_neuron
    tree = TopContexts.merge_all([TopContexts.merge_all(parts[:2] or parts),
                                  TopContexts.merge_all(parts[2:] or parts[:1])])
    assert np.array_equal(tree.mass, merged.mass) and \
        tree.trace_id.tolist() == merged.trace_id.tolist()


def test_bad_jobs_are_refused():
    with pytest.raises(EngineError, match="sorted, unique"):
        ContextsJob(store="s", neurons=(("m", 3), ("m", 1)))
    with pytest.raises(EngineError, match="below 2"):
        ContextsJob(store="s", neurons=(("m", 255 << UNIT_BITS),))
    with pytest.raises(EngineError, match="per_neuron: expected an integer >= 1"):
        ContextsJob(store="s", neurons=(), per_neuron=0)
    with pytest.raises(EngineError, match="one per_neuron"):
        TopContexts.empty(1).merge(TopContexts.empty(2))


def test_a_job_pickles_without_its_lookup_tables():
    import pickle

    job = ContextsJob(store="s", neurons=(("m", A),))
    corpus_contexts(corpus_of([[[(A, 1.0)]]]), ["t"], ["m"], job)  # builds the lookup
    assert "_lookup" in job.__dict__
    data = pickle.dumps(job)
    assert len(data) < 2000
    assert pickle.loads(data) == job
