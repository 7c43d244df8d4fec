"""The NEX activation store: chunked, sharded Zarr v3 sparse rows + a Parquet manifest.

Typical use::

    from pipelines.store import ActivationStore
    store = ActivationStore.create("runs/acts.zarr", {"capture": capture_params})
    store.write_part("model-a-00000", records)       # atomic, rerun-safe
    store.finalize()                                 # one consolidated manifest
    corpus = ActivationStore.open("runs/acts.zarr").read_corpus()

The on-disk schema is documented in ``docs/STORE.md`` and in :mod:`pipelines.store.schema`.
"""

from __future__ import annotations

from .schema import SCHEMA_VERSION, StoreError
from .manifests import aggregate_extras
from .store import ActivationStore

__all__ = ["SCHEMA_VERSION", "ActivationStore", "StoreError", "aggregate_extras"]
