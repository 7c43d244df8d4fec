"""The store's root and capture records: what a new store records, what opening one checks,
and the per-model capture parameters an append is checked against.

The root ``zarr.json`` holds the schema version, the store kind, the metadata given at
creation (``capture``, ``storage``, ...), package versions and the creation time. Each
model id gets ``models/<model dir>/zarr.json`` holding its capture parameters, created
once (exclusively) and never modified, so one store can hold a family of checkpoints.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime, timezone

from nex_transforms.errors import expected

from ..versions import package_versions
from .fs import Location, group_node
from .schema import (MODELS_DIR, READABLE_SCHEMAS, SCHEMA_VERSION, STORE_KIND, StoreError,
                     check_storage)

#: Packages whose versions shape the stored bytes (recorded in the root attributes).
STORE_PACKAGES = ("nex-pipeline", "zarr", "numcodecs", "numpy", "pyarrow")


def model_dir_name(model_id: str) -> str:
    """The folder name of a model id under ``models/``: the id itself when it is a safe
    name, otherwise a safe slug plus a hash of the id (ids like ``org/name`` stay distinct)."""
    slug = re.sub(r"[^A-Za-z0-9._-]", "_", model_id).lstrip(".")
    if slug == model_id and slug not in ("", "zarr.json"):
        return slug
    return f"{slug or 'model'}-{hashlib.sha256(model_id.encode()).hexdigest()[:12]}"


def model_capture_path(model_id: str) -> str:
    """The per-model record, relative to the store root."""
    return f"{MODELS_DIR}/{model_dir_name(model_id)}/zarr.json"


def normalise(value: object, what: str) -> object:
    """A JSON round trip (tuples become lists); StoreError if not JSON-serialisable."""
    try:
        return json.loads(json.dumps(value, sort_keys=True))
    except (TypeError, ValueError) as err:
        raise StoreError(expected(what, "JSON-serialisable values", err)) from None


def _differing_keys(stored: dict, given: dict) -> list[str]:
    keys = sorted(set(stored) | set(given))
    return [k for k in keys if stored.get(k, "<missing>") != given.get(k, "<missing>")]


def new_root(metadata: object) -> tuple[dict, bool, dict]:
    """``(given, explicit_storage, attributes)`` for creating a store with ``metadata``:
    the checked, normalised metadata (``capture`` a dict, ``storage`` completed), whether
    the storage options were given, and the root attributes of a new store."""
    if not isinstance(metadata, dict):
        raise StoreError(expected("store metadata", "a dict", type(metadata).__name__))
    given = normalise(metadata, "store metadata")
    given["capture"] = given.get("capture") or {}
    if not isinstance(given["capture"], dict):
        raise StoreError(expected("metadata['capture']", "a dict of capture parameters",
                                  type(given["capture"]).__name__))
    explicit_storage = "storage" in metadata
    given["storage"] = check_storage(given.get("storage"))
    attributes = {"schema_version": SCHEMA_VERSION, "store_kind": STORE_KIND,
                  "metadata": given, "packages": package_versions(STORE_PACKAGES),
                  "created_at": datetime.now(timezone.utc).isoformat()}
    return given, explicit_storage, attributes


def read_root(loc: Location) -> dict:
    """The root attributes of the store at ``loc``; StoreError when it is unreadable, not
    a NEX store, or of a schema version this code does not read."""
    path = loc.url
    try:
        node = loc.read_json("zarr.json")
    except OSError as err:
        raise StoreError(expected(f"activation store {path}", "a readable zarr.json",
                                  " ".join(str(err).split())[:300])) from None
    attributes = (node or {}).get("attributes") or {}
    if node is None or attributes.get("store_kind") != STORE_KIND:
        raise StoreError(expected(f"activation store {path}",
                                  f"a zarr.json with store_kind {STORE_KIND!r}",
                                  "none" if node is None else "another zarr hierarchy"))
    version = attributes.get("schema_version")
    if version not in READABLE_SCHEMAS:
        raise StoreError(expected(f"activation store {path} schema_version",
                                  " or ".join(map(str, READABLE_SCHEMAS))
                                  + f" (this code's schemas, {SCHEMA_VERSION} for new stores)",
                                  f"{version} (written by another version)"))
    return attributes


def capture_metadata(loc: Location, stored: dict, model_id: str | None = None) -> dict | None:
    """The capture parameters recorded for ``model_id`` in the store whose root metadata
    is ``stored`` (None: those given at the store's creation); None when the store holds
    no record of that model."""
    root = stored.get("capture") or {}
    if model_id is None:
        return root
    node = loc.read_json(model_capture_path(model_id))
    if node is not None and isinstance((node.get("attributes") or {}).get("capture"), dict):
        return node["attributes"]["capture"]
    return root if root.get("model_id") == model_id else None


def captures(loc: Location, stored: dict) -> dict:
    """``{model_id: capture parameters}`` for every model recorded in the store."""
    out: dict = {}
    root = stored.get("capture") or {}
    if isinstance(root.get("model_id"), str):
        out[root["model_id"]] = root
    for name in loc.listdir(MODELS_DIR):
        if name == "zarr.json":
            continue
        attributes = (loc.read_json(f"{MODELS_DIR}/{name}/zarr.json") or {}) \
            .get("attributes") or {}
        if isinstance(attributes.get("model_id"), str) and \
                isinstance(attributes.get("capture"), dict):
            out[attributes["model_id"]] = attributes["capture"]
    return dict(sorted(out.items()))


def _record_model(loc: Location, model_id: str, capture: dict) -> None:
    loc.create(f"{MODELS_DIR}/zarr.json", group_node({}))
    loc.create(model_capture_path(model_id), group_node({"model_id": model_id,
                                                         "capture": capture}))


def check_append(loc: Location, stored: dict, given: dict, explicit_storage: bool,
                 where) -> None:
    """Check that ``given`` metadata may be appended to the store ``where`` (at ``loc``,
    root metadata ``stored``); StoreError naming the differing keys otherwise.

    Capture parameters are recorded per model id: a model already in the store must be
    appended with equal parameters; a new model id records its own (created once,
    exclusively, so concurrent appenders of one new model agree on one record)."""
    model_id = given["capture"].get("model_id")
    if isinstance(model_id, str) and model_id:
        recorded = capture_metadata(loc, stored, model_id)
        record_path = model_capture_path(model_id)
        if recorded is None:  # a new model in this store: record its parameters first
            _record_model(loc, model_id, given["capture"])
            recorded = capture_metadata(loc, stored, model_id)
        what = f"store {where} capture parameters of model {model_id!r}"
    else:
        recorded, record_path = stored.get("capture") or {}, None
        what = f"store {where} capture parameters"
    differing = _differing_keys(recorded, given["capture"])
    if differing:
        detail = "; ".join(f"{k}: stored {recorded.get(k, '<missing>')!r}, "
                           f"given {given['capture'].get(k, '<missing>')!r}"
                           for k in differing[:5])
        raise StoreError(expected(what, "the stored ones",
                                  f"different keys {differing} ({detail})"))
    if record_path is not None and not loc.exists(record_path):
        # the store's first model (recorded in the root attributes): record it per model too
        _record_model(loc, model_id, recorded)
    if explicit_storage and given["storage"] != stored.get("storage"):
        raise StoreError(expected(f"store {where} storage options",
                                  stored.get("storage"), given["storage"]))


__all__ = ["STORE_PACKAGES", "capture_metadata", "captures", "check_append",
           "model_capture_path", "model_dir_name", "new_root", "normalise", "read_root"]
