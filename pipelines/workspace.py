"""A workspace of scored checkpoints: one store and one tables folder per (checkpoint,
calibration set), completion markers, exclusive claims and a Parquet catalog.

Layout under the workspace root::

    checkpoints/<checkpoint key>/<calibration key>/store/    activation store (resumable)
    checkpoints/<checkpoint key>/<calibration key>/tables/   score tables (nex score)
    checkpoints/<checkpoint key>/<calibration key>/done.json completion marker (the catalog row)
    claims/<checkpoint key>--<calibration key>.claim         exclusive claim of a scoring run
    catalog/models.parquet                                   one row per (checkpoint, calibration set)

A checkpoint key is ``<slug of its name>-<first 12 hex digits of its content hash>``, a
calibration key ``<set name>-<first 8 hex digits of its parameters' hash>``: work is keyed
on what is scored, never on run ids, so a rerun with the same inputs finds the finished
store and tables. Flows (``flows/``) sequence these functions; nothing here imports Prefect.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import socket
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from nex_transforms import NexError
from nex_transforms.errors import expected

from .crashsafe import atomic_write, atomic_write_json

#: Where the shipped calibration sets live (data files, read by path).
CALIBRATION_SET_DIR = Path(__file__).resolve().parents[1] / "flows" / "calibration_sets"
CATALOG = Path("catalog") / "models.parquet"
#: Files of a model folder that are not part of its content hash (the model card is
#: rewritten by the Hugging Face publisher; hidden files are tool state).
UNHASHED = ("README.md",)
#: Seconds without any change after which a folder missing weights counts as broken
#: rather than still being written.
SETTLE_SECONDS = 5.0
#: A claim older than this (seconds) is treated as left by a crashed run and taken over.
CLAIM_STALE_SECONDS = 6 * 3600.0
BASELINES = ("mean_entropy", "mean_self_certainty", "mean_token_logprob",
             "deepconf_mean_confidence", "deepconf_lowest_group_confidence")


class WorkspaceError(NexError):
    """A problem with a workspace, a checkpoint folder or a calibration set."""


class CheckpointError(WorkspaceError):
    """A checkpoint that cannot be scored (missing weights, incomplete shards, ...)."""


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "checkpoint"


# --------------------------------------------------------------------------- calibration sets
@dataclass(frozen=True)
class CalibrationSet:
    """A named prompt source with sample count, generation, capture and scoring parameters
    (one YAML file, see ``flows/calibration_sets/``)."""

    name: str
    prompts: str
    limit: int | None = None
    samples: int = 4
    max_new_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 0.95
    seed: int = 0
    batch_size: int = 8
    prompt_format: str = "auto"
    row_size: int = 8
    top_k_neurons: int = 500
    layers: str = "all"
    dtype: str = "float32"
    part_size: int = 16
    engine: str = "local"
    calibration: str = "per-model"
    description: str = ""

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", self.name or ""):
            raise WorkspaceError(expected("calibration set name", "letters, digits, '.', '_', '-'",
                                          repr(self.name)))
        for what in ("samples", "max_new_tokens", "row_size", "top_k_neurons", "batch_size",
                     "part_size"):
            value = getattr(self, what)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise WorkspaceError(expected(f"calibration set {self.name}: {what}",
                                              "an integer >= 1", repr(value)))
        if self.limit is not None and (not isinstance(self.limit, int) or self.limit < 1):
            raise WorkspaceError(expected(f"calibration set {self.name}: limit",
                                          "an integer >= 1 or null", repr(self.limit)))
        if self.engine not in ("local", "beam", "dask"):
            raise WorkspaceError(expected(f"calibration set {self.name}: engine",
                                          "local, beam or dask", repr(self.engine)))
        if self.calibration not in ("per-model", "global"):
            raise WorkspaceError(expected(f"calibration set {self.name}: calibration",
                                          "per-model or global", repr(self.calibration)))

    @property
    def fingerprint(self) -> str:
        """SHA-256 over every parameter except the description."""
        data = {k: v for k, v in asdict(self).items() if k != "description"}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()

    @property
    def key(self) -> str:
        return f"{self.name}-{self.fingerprint[:8]}"

    def to_dict(self) -> dict:
        return asdict(self)


def load_calibration_set(source: str | os.PathLike | dict) -> CalibrationSet:
    """A calibration set from a dict, a YAML file, or the name of a shipped one
    (``gsm8k``, ``arithmetic``: ``flows/calibration_sets/<name>.yaml``)."""
    if isinstance(source, CalibrationSet):
        return source
    if isinstance(source, dict):
        data = dict(source)
    else:
        path = Path(source)
        if not path.suffix and not path.exists():
            path = CALIBRATION_SET_DIR / f"{source}.yaml"
        if not path.is_file():
            shipped = sorted(p.stem for p in CALIBRATION_SET_DIR.glob("*.yaml"))
            raise WorkspaceError(expected("calibration set", f"a YAML file or one of {shipped}",
                                          repr(str(source))))
        import yaml

        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise WorkspaceError(expected(f"calibration set {path}", "valid YAML",
                                          str(err).splitlines()[0])) from None
        if not isinstance(data, dict):
            raise WorkspaceError(expected(f"calibration set {path}", "a mapping",
                                          type(data).__name__))
        data.setdefault("name", path.stem)
    known = set(CalibrationSet.__dataclass_fields__)
    unknown = sorted(set(data) - known)
    if unknown:
        raise WorkspaceError(expected("calibration set keys", f"some of {sorted(known)}",
                                      f"unknown {unknown}"))
    if "prompts" not in data:
        raise WorkspaceError(expected(f"calibration set {data.get('name')}", "a 'prompts' key",
                                      "none"))
    return CalibrationSet(**data)


# --------------------------------------------------------------------------- checkpoints
@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint to score: a Hugging Face model folder, its content hash, and where it
    came from (``source``: ``{"kind": "directory"}`` or ``{"kind": "mlflow", "name",
    "version", "tracking_uri"}``)."""

    name: str
    path: str
    content_hash: str
    source: dict = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{slug(self.name)}-{self.content_hash[:12]}"


def _model_files(folder: Path) -> list[Path]:
    """The files that make a checkpoint: a GGUF folder (no config.json) is its .gguf files,
    a Hugging Face folder every file but hidden ones and the model card."""
    if not (folder / "config.json").is_file():
        ggufs = sorted(p for p in folder.glob("*.gguf") if p.is_file())
        if ggufs:
            return ggufs
    files = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or rel.as_posix() in UNHASHED:
            continue
        if path.is_file():
            files.append(path)
    return files


def content_hash(folder: str | os.PathLike) -> str:
    """SHA-256 over the relative paths and bytes of a model folder's files (hidden files
    and the model card ``README.md`` left out): equal hashes mean the same checkpoint,
    whatever its folder or registry name."""
    folder = Path(folder)
    digest = hashlib.sha256()
    for path in _model_files(folder):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()


def checkpoint_state(folder: str | os.PathLike, settle_seconds: float = SETTLE_SECONDS,
                     now: float | None = None) -> tuple[str, str]:
    """``("ready" | "pending" | "broken", why)`` for a model folder.

    Ready: one ``.gguf`` file without ``config.json``, or ``config.json`` and complete weights (every shard named in a
    ``*.safetensors.index.json``, else at least one ``.safetensors``/``.bin`` file), no
    temporary files, and nothing changed for ``settle_seconds``. Pending: still being
    written (recent changes, temporary files, or weights missing but the folder recent).
    Broken: weights missing or incomplete in a folder unchanged for ``settle_seconds``.
    """
    folder = Path(folder)
    now = time.time() if now is None else now
    if not folder.is_dir():
        return "broken", f"expected a model folder, got {'a file' if folder.exists() else 'none'}"
    entries = [p for p in folder.rglob("*")]
    newest = max([folder.stat().st_mtime] + [p.stat().st_mtime for p in entries if p.exists()])
    recent = now - newest < settle_seconds
    partial = [p.name for p in entries if p.name.endswith((".tmp", ".part", ".incomplete", ".lock"))]
    if partial:
        return "pending", f"files still being written: {partial[:3]}"
    problem = None
    ggufs = sorted(folder.glob("*.gguf"))
    if not (folder / "config.json").is_file() and len(ggufs) == 1:
        pass  # a GGUF checkpoint: the one file holds config and weights
    elif not (folder / "config.json").is_file():
        problem = ("expected config.json (or one .gguf file), got "
                   + (f"{len(ggufs)} .gguf files" if ggufs else "none"))
    else:
        indexes = sorted(folder.glob("*.safetensors.index.json")) + \
            sorted(folder.glob("*.bin.index.json"))
        if indexes:
            try:
                shards = set(json.loads(indexes[0].read_text())["weight_map"].values())
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                shards, problem = set(), f"expected a readable weight index {indexes[0].name}"
            missing = sorted(s for s in shards if not (folder / s).is_file())
            if missing and problem is None:
                problem = (f"weight shards: expected all {len(shards)} listed in "
                           f"{indexes[0].name}, got {len(missing)} missing ({missing[:3]})")
        elif not any(p.suffix in (".safetensors", ".bin", ".gguf") for p in folder.iterdir()):
            problem = "weights: expected a .safetensors, .bin or .gguf file, got none"
    if problem:
        return ("pending", problem + " (folder changed recently)") if recent else ("broken", problem)
    if recent:
        return "pending", f"changed less than {settle_seconds:g} s ago"
    return "ready", "complete"


def directory_checkpoint(folder: str | os.PathLike) -> Checkpoint:
    """A ready model folder as a :class:`Checkpoint` (name: the folder name)."""
    folder = Path(folder).absolute()
    return Checkpoint(folder.name, str(folder), content_hash(folder), {"kind": "directory"})


# --------------------------------------------------------------------------- the workspace
class Workspace:
    """Stores, tables, markers, claims and the catalog of scored checkpoints under a root."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root).absolute()
        if self.root.exists() and not self.root.is_dir():
            raise WorkspaceError(expected("workspace", "a folder", f"a file {self.root}"))

    def __repr__(self) -> str:
        return f"Workspace({str(self.root)!r})"

    def entry_dir(self, checkpoint: Checkpoint | str, calset: CalibrationSet) -> Path:
        return self.root / "checkpoints" / _key(checkpoint) / calset.key

    def store_path(self, checkpoint: Checkpoint, calset: CalibrationSet) -> Path:
        return self.entry_dir(checkpoint, calset) / "store"

    def tables_path(self, checkpoint: Checkpoint, calset: CalibrationSet) -> Path:
        return self.entry_dir(checkpoint, calset) / "tables"

    def marker_path(self, checkpoint: Checkpoint | str, calset: CalibrationSet) -> Path:
        return self.entry_dir(checkpoint, calset) / "done.json"

    def is_done(self, checkpoint: Checkpoint | str, calset: CalibrationSet) -> bool:
        return self.marker_path(checkpoint, calset).is_file()

    def entry(self, checkpoint: Checkpoint, calset: CalibrationSet) -> dict | None:
        """The catalog row of a finished (checkpoint, calibration set), else None."""
        try:
            return json.loads(self.marker_path(checkpoint, calset).read_text())
        except (OSError, ValueError):
            return None

    # ----------------------------------------------------------------- claims, failures
    def _claim_path(self, checkpoint: Checkpoint | str, calset: CalibrationSet) -> Path:
        return self.root / "claims" / f"{_key(checkpoint)}--{calset.key}.claim"

    def claim(self, checkpoint: Checkpoint | str, calset: CalibrationSet, owner: str = "",
              stale_seconds: float = CLAIM_STALE_SECONDS) -> bool:
        """Claim the scoring of (checkpoint, calibration set) exclusively. True when this call
        holds the claim; False when another live claim holds it or it is already done. A
        claim older than ``stale_seconds`` (left by a crashed run) is taken over."""
        if self.is_done(checkpoint, calset):
            return False
        path = self._claim_path(checkpoint, calset)
        path.parent.mkdir(parents=True, exist_ok=True)
        body = json.dumps({"owner": owner or f"{socket.gethostname()}:{os.getpid()}",
                           "claimed_at": datetime.now(timezone.utc).isoformat()}).encode()
        for _ in range(3):
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                try:
                    age = time.time() - path.stat().st_mtime
                except FileNotFoundError:
                    continue  # released meanwhile: try again
                if age < stale_seconds:
                    return False
                # stale: move it aside atomically; of several takers one wins the rename
                grave = path.with_name(f"{path.name}.stale-{os.getpid()}-{time.time_ns()}")
                try:
                    os.rename(path, grave)
                except FileNotFoundError:
                    return False
                grave.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "wb") as handle:
                handle.write(body)
            if self.is_done(checkpoint, calset):  # finished between the check and the claim
                return self.release(checkpoint, calset)
            return True
        return False

    def release(self, checkpoint: Checkpoint | str, calset: CalibrationSet) -> bool:
        """Drop the claim (returns False, for use in expressions)."""
        self._claim_path(checkpoint, calset).unlink(missing_ok=True)
        return False

    def _failure_path(self, key: str, calset: CalibrationSet) -> Path:
        return self.root / "failures" / f"{key}--{calset.key}.json"

    def record_failure(self, key: str, calset: CalibrationSet, name: str, error: str) -> None:
        """Remember that scoring ``key`` (a checkpoint key or :func:`failure_key`) failed."""
        atomic_write_json(self._failure_path(key, calset), {
            "name": name, "error": error, "failed_at": datetime.now(timezone.utc).isoformat()})

    def failure(self, key: str, calset: CalibrationSet) -> dict | None:
        try:
            return json.loads(self._failure_path(key, calset).read_text())
        except (OSError, ValueError):
            return None

    def clear_failures(self) -> int:
        """Forget recorded failures (the next scan tries those checkpoints again)."""
        files = list((self.root / "failures").glob("*.json"))
        for path in files:
            path.unlink(missing_ok=True)
        return len(files)

    # ----------------------------------------------------------------- completion, catalog
    def result_row(self, checkpoint: Checkpoint, calset: CalibrationSet) -> dict:
        """The catalog row of a scored (checkpoint, calibration set), from its tables."""
        from .tables import read_run, read_table

        tables = self.tables_path(checkpoint, calset)
        models = read_table(tables, "models").to_pylist()
        if len(models) != 1:
            raise WorkspaceError(expected(f"tables {tables}", "one model row",
                                          f"{len(models)} rows"))
        model = models[0]
        row = {
            "checkpoint": checkpoint.name,
            "checkpoint_key": checkpoint.key,
            "checkpoint_hash": checkpoint.content_hash,
            "checkpoint_path": checkpoint.path,
            "source": json.dumps(checkpoint.source, sort_keys=True),
            "calibration_set": calset.name,
            "calibration_key": calset.key,
            "model_id": model["model_id"],
            "nex": _float(model["nex"]),
            "log_gap": _float(model["log_gap"]),
            "n_responses": int(model["n_responses"]),
            "n_scored": int(model["n_scored"]),
            "n_cycles": int(model["n_cycles"]),
            **{name: _float(model[name]) for name in BASELINES},
            "store": str(self.store_path(checkpoint, calset).relative_to(self.root)),
            "tables": str(tables.relative_to(self.root)),
            "tables_fingerprint": tables_fingerprint(tables),
            "store_fingerprint": read_run(tables).get("store_fingerprint"),
            "scored_at": datetime.now(timezone.utc).isoformat(),
        }
        previous = self.entry(checkpoint, calset)
        if previous is not None and previous.get("tables_fingerprint") == row["tables_fingerprint"]:
            row["scored_at"] = previous["scored_at"]  # same tables: the same row
        return row

    def complete(self, checkpoint: Checkpoint, calset: CalibrationSet,
                 row: dict | None = None) -> dict:
        """Record a finished (checkpoint, calibration set): its catalog row as the completion
        marker (unchanged when the tables are), then rewrite the catalog. Returns the row."""
        row = row or self.result_row(checkpoint, calset)
        if self.entry(checkpoint, calset) != json.loads(json.dumps(row)):
            atomic_write_json(self.marker_path(checkpoint, calset), row)
        self.write_catalog()
        return row

    def entries(self) -> list[dict]:
        """Every completion marker's row, sorted by checkpoint key and calibration key."""
        rows = []
        for marker in sorted((self.root / "checkpoints").glob("*/*/done.json")):
            try:
                rows.append(json.loads(marker.read_text()))
            except (OSError, ValueError):
                continue
        return rows

    def catalog(self):
        """The catalog as a pyarrow table (built from the completion markers)."""
        import pyarrow as pa

        return pa.Table.from_pylist(self.entries(), schema=catalog_schema())

    def write_catalog(self) -> Path:
        """Write ``catalog/models.parquet`` atomically from the completion markers."""
        import pyarrow.parquet as pq

        table = self.catalog()
        return atomic_write(self.root / CATALOG, lambda p: pq.write_table(table, p))

    def ranked(self, calibration_set: str | None = None) -> list[dict]:
        """Catalog rows ranked by NEX (highest first, NaN last) within each calibration
        set; each row gets ``rank`` (1-based within its set)."""
        rows = [r for r in self.entries()
                if calibration_set is None or r["calibration_set"] == calibration_set]
        rows.sort(key=lambda r: (r["calibration_set"], _nan_last(r["nex"]), r["checkpoint"]))
        out, counts = [], {}
        for row in rows:
            counts[row["calibration_set"]] = counts.get(row["calibration_set"], 0) + 1
            out.append(dict(row, rank=counts[row["calibration_set"]]))
        return out


# --------------------------------------------------------------------------- stages
class StageError(WorkspaceError):
    """A stage of one checkpoint's scoring failed: names the checkpoint and the stage."""

    def __init__(self, checkpoint: str, stage: str, error: BaseException | str) -> None:
        self.checkpoint, self.stage = checkpoint, stage
        #: True when the cause is not bad input (a lost connection, a full disk): worth retrying
        self.transient = isinstance(error, BaseException) and not isinstance(error, NexError)
        detail = error if isinstance(error, str) else \
            f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        super().__init__(f"checkpoint {checkpoint}, stage {stage}: {detail}")


def capture_stage(workspace: Workspace, checkpoint: Checkpoint, calset: CalibrationSet,
                  device: str = "cpu", progress: bool = False) -> dict:
    """Capture the calibration set's prompts with the checkpoint into its workspace store.

    Reuse: a finished capture (marker ``capture.json``, written after the store is
    finalized) returns its summary without loading the model; a half-finished one resumes
    (complete parts are kept). Returns the capture summary (``reused`` True when reused).
    """
    marker = workspace.entry_dir(checkpoint, calset) / "capture.json"
    if marker.is_file():
        try:
            return dict(json.loads(marker.read_text()), reused=True)
        except ValueError:
            pass
    state, why = checkpoint_state(checkpoint.path, settle_seconds=0.0)
    if state != "ready":
        raise CheckpointError(f"checkpoint {checkpoint.name} ({checkpoint.path}): {why}")
    from .capture import CaptureConfig, run_capture, summary_dict

    config = CaptureConfig(
        model=checkpoint.path, prompts=calset.prompts, out=str(workspace.store_path(checkpoint, calset)),
        samples=calset.samples, max_new_tokens=calset.max_new_tokens,
        temperature=calset.temperature, top_p=calset.top_p, seed=calset.seed,
        batch_size=calset.batch_size, device=device, dtype=calset.dtype,
        top_k_neurons=calset.top_k_neurons, row_size=calset.row_size, layers=calset.layers,
        limit=calset.limit, part_size=calset.part_size, prompt_format=calset.prompt_format,
        model_id=checkpoint.key, progress=progress)
    summary = summary_dict(run_capture(config))
    if not summary["finalized"]:
        raise WorkspaceError(expected(f"capture of {checkpoint.name}", "a finalized store",
                                      "parts still missing"))
    atomic_write_json(marker, json.loads(json.dumps(summary, default=str)))
    return dict(summary, reused=False)


def score_stage(workspace: Workspace, checkpoint: Checkpoint, calset: CalibrationSet,
                engine: str | None = None, engine_options: dict | None = None) -> dict:
    """Score the checkpoint's store into its tables folder (``nex score``'s engines).

    Reuse: tables whose ``run.json`` has the store's current fingerprint are kept.
    Returns the run summary (``reused`` True when the tables were kept)."""
    from .engines import run_engine
    from .engines.core import ScoreConfig, plan_run
    from .tables import read_run

    store = workspace.store_path(checkpoint, calset)
    tables = workspace.tables_path(checkpoint, calset)
    config = ScoreConfig(store=str(store), calibration=calset.calibration)
    if (tables / "run.json").is_file():
        run = read_run(tables)
        if run.get("store_fingerprint") == plan_run(config).fingerprint:
            return dict(run, reused=True)
    summary = run_engine(engine or calset.engine, config, tables, engine_options)
    return dict(summary, reused=False)


def publish_stage(workspace: Workspace, checkpoint: Checkpoint, calset: CalibrationSet,
                  targets: list[str] | tuple[str, ...] = ("folder",),
                  tracking_uri: str | None = None) -> dict:
    """Publish the result to each target, then record it in the workspace catalog (the
    completion marker comes last: a failed publish leaves the checkpoint to be retried).

    Targets: ``folder`` (``WORKSPACE/published``), ``folder:PATH``, ``hf`` (the
    checkpoint's own model folder), ``hf:PATH``, ``source`` (the MLflow model version the
    checkpoint came from; nothing for folder checkpoints), ``mlflow:models:/NAME/VERSION``.
    Returns ``{"row": catalog row, "changes": {target: changes}}``.
    """
    row = workspace.result_row(checkpoint, calset)
    tables = workspace.tables_path(checkpoint, calset)
    changes: dict = {}
    for target in targets:
        if target == "folder":
            target = f"folder:{workspace.root / 'published'}"
        if target == "hf":
            target = f"hf:{checkpoint.path}"
        if target == "source":
            if checkpoint.source.get("kind") != "mlflow":
                continue
            target = f"mlflow:models:/{checkpoint.source['name']}/{checkpoint.source['version']}"
            uri = checkpoint.source.get("tracking_uri") or tracking_uri
        else:
            uri = tracking_uri
        from .publish import parse_target

        kind, where = parse_target(target)
        if kind == "mlflow":
            from .publish.mlflow import publish_mlflow

            changes[target] = publish_mlflow(row, tables, where, uri)
        elif kind == "huggingface":
            from .publish.huggingface import publish_huggingface

            changes[target] = publish_huggingface(row, where)
        else:
            from .publish.folder import publish_folder

            changes[target] = publish_folder([row], tables, where)
    workspace.complete(checkpoint, calset, row)
    return {"row": row, "changes": changes}


def _hash_signature(folder: Path) -> list:
    return [(p.relative_to(folder).as_posix(), p.stat().st_size, p.stat().st_mtime_ns)
            for p in _model_files(folder)]


def cached_content_hash(workspace: Workspace, folder: str | os.PathLike) -> str:
    """:func:`content_hash` of a folder, remembered in the workspace against the files'
    names, sizes and modification times (a scan does not re-read unchanged weights)."""
    folder = Path(folder).absolute()
    cache = workspace.root / "hashes" / f"{hashlib.sha256(str(folder).encode()).hexdigest()[:24]}.json"
    signature = _hash_signature(folder)
    try:
        saved = json.loads(cache.read_text())
        if saved["signature"] == json.loads(json.dumps(signature)):
            return saved["hash"]
    except (OSError, ValueError, KeyError):
        pass
    digest = content_hash(folder)
    atomic_write_json(cache, {"folder": str(folder), "signature": signature, "hash": digest})
    return digest


def scan_directory(workspace: Workspace, directory: str | os.PathLike,
                   settle_seconds: float = SETTLE_SECONDS) -> list[dict]:
    """The model folders directly under ``directory``: ``{"name", "path", "state", "why",
    "checkpoint"}`` (``checkpoint``: a :class:`Checkpoint` dict when ready)."""
    directory = Path(directory).absolute()
    if not directory.is_dir():
        raise WorkspaceError(expected("checkpoint directory", "an existing folder", str(directory)))
    found = []
    for folder in sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith(".")):
        state, why = checkpoint_state(folder, settle_seconds)
        item = {"name": folder.name, "path": str(folder), "state": state, "why": why,
                "checkpoint": None}
        if state == "ready":
            item["checkpoint"] = asdict(Checkpoint(folder.name, str(folder),
                                                   cached_content_hash(workspace, folder),
                                                   {"kind": "directory"}))
        found.append(item)
    return found


def scan_mlflow(workspace: Workspace, model_name: str, tracking_uri: str | None = None) -> list[dict]:
    """The versions of an MLflow registered model, each downloaded once into
    ``WORKSPACE/downloads/<model>/<version>`` (same item shape as :func:`scan_directory`)."""
    from .publish.mlflow import download_version, registered_versions

    found = []
    for mv in registered_versions(model_name, tracking_uri):
        name = f"{model_name}-v{mv.version}"
        dest = workspace.root / "downloads" / slug(model_name) / str(mv.version)
        item = {"name": name, "path": str(dest), "state": "ready", "why": "registered",
                "checkpoint": None}
        try:
            download_version(model_name, str(mv.version), dest, tracking_uri)
        except Exception as err:  # noqa: BLE001 - one version failing does not stop the scan
            item.update(state="broken", why=f"download: {type(err).__name__}: {err}")
            found.append(item)
            continue
        state, why = checkpoint_state(dest, settle_seconds=0.0)
        item.update(state=state, why=why)
        if state == "ready":
            item["checkpoint"] = asdict(Checkpoint(
                name, str(dest), cached_content_hash(workspace, dest),
                {"kind": "mlflow", "name": model_name, "version": str(mv.version),
                 "tracking_uri": tracking_uri}))
        found.append(item)
    return found


def _key(checkpoint: Checkpoint | str) -> str:
    return checkpoint if isinstance(checkpoint, str) else checkpoint.key


def failure_key(folder: str | os.PathLike) -> str:
    """Key of a folder that is not a usable checkpoint: its path and its files' names,
    sizes and times (a changed folder is tried again)."""
    folder = Path(folder).absolute()
    try:
        signature = _hash_signature(folder)
    except OSError:
        signature = []
    digest = hashlib.sha256(json.dumps([str(folder), signature]).encode()).hexdigest()
    return f"{slug(folder.name)}-broken-{digest[:12]}"


def _float(value) -> float:
    return float("nan") if value is None else float(value)


def _nan_last(value: float) -> float:
    return math.inf if value is None or math.isnan(value) else -value


def catalog_schema():
    """Schema of ``catalog/models.parquet``."""
    import pyarrow as pa

    strings = ("checkpoint", "checkpoint_key", "checkpoint_hash", "checkpoint_path", "source",
               "calibration_set", "calibration_key", "model_id")
    fields = [pa.field(n, pa.string()) for n in strings]
    fields += [pa.field("nex", pa.float64()), pa.field("log_gap", pa.float64())]
    fields += [pa.field(n, pa.int64()) for n in ("n_responses", "n_scored", "n_cycles")]
    fields += [pa.field(n, pa.float64()) for n in BASELINES]
    fields += [pa.field(n, pa.string()) for n in ("store", "tables", "tables_fingerprint",
                                                  "store_fingerprint", "scored_at")]
    return pa.schema(fields, metadata={"nex_catalog_schema_version": "1"})


def tables_fingerprint(tables: str | os.PathLike) -> str:
    """SHA-256 over the tables' contents (rows of every table, canonical order) and the
    store fingerprint of run.json: equal for the same scores, whatever the run or time."""
    from .tables import TABLE_NAMES, read_run, read_table, table_path

    tables = Path(tables)
    digest = hashlib.sha256(str(read_run(tables).get("store_fingerprint")).encode())
    for name in TABLE_NAMES:
        if table_path(tables, name).exists():
            table = read_table(tables, name)
            digest.update(name.encode())
            digest.update(json.dumps(table.to_pydict(), sort_keys=True, default=repr).encode())
    return digest.hexdigest()


def format_ranking(rows: list[dict]) -> str:
    """The ranking as a fixed-width text table (one screen)."""
    header = (f"{'rank':>4}  {'checkpoint':<28} {'calibration':<14} {'NEX':>8} {'log-gap':>8} "
              f"{'scored':>7} {'entropy':>8} {'self-cert':>9} {'logprob':>8} {'DeepConf':>8}")
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r['rank']:>4}  {r['checkpoint'][:28]:<28} {r['calibration_set'][:14]:<14} "
            f"{r['nex']:>8.5f} {r['log_gap']:>8.4f} {r['n_scored']:>3}/{r['n_responses']:<3} "
            f"{r['mean_entropy']:>8.3f} {r['mean_self_certainty']:>9.3f} "
            f"{r['mean_token_logprob']:>8.3f} {r['deepconf_mean_confidence']:>8.3f}")
    return "\n".join(lines)


__all__ = ["CALIBRATION_SET_DIR", "CalibrationSet", "Checkpoint", "CheckpointError",
           "StageError", "Workspace", "WorkspaceError", "cached_content_hash", "capture_stage",
           "failure_key",
           "catalog_schema", "checkpoint_state", "content_hash", "directory_checkpoint",
           "format_ranking", "load_calibration_set", "publish_stage", "scan_directory",
           "scan_mlflow", "score_stage", "tables_fingerprint"]
