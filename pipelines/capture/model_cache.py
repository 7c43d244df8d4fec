"""The model cache: its folder, and the converted (Hugging Face layout) copies of GGUF
models that later loads read instead of converting again (see :func:`converted_dir`)."""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

def cache_dir() -> Path:
    """The model cache: ``$NEX_CACHE`` or ``~/.cache/nex``."""
    return Path(os.environ.get("NEX_CACHE") or Path.home() / ".cache" / "nex")


def dist_version(dist: str) -> str:
    """The installed version of a distribution, or ``unknown``."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def model_slug(text: str) -> str:
    """``text`` as a file-name-safe model id."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "model"


@contextlib.contextmanager
def quiet_gguf_conversion(quiet: bool):
    """transformers draws a GGUF de-quantisation bar unconditionally; hide it if asked."""
    module = None
    if quiet:
        try:
            from transformers import modeling_gguf_pytorch_utils as module
        except ImportError:
            module = None
    if module is None or not hasattr(module, "tqdm"):
        yield
        return
    original = module.tqdm
    module.tqdm = functools.partial(original, disable=True)
    try:
        yield
    finally:
        module.tqdm = original


#: Bumped when the layout of a converted-model cache entry changes.
CONVERTED_FORMAT = 1
#: Marker file written last into a converted-model folder: the entry is complete.
CONVERTED_MARKER = "nex-converted.json"


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def converted_dir(spec, dtype: str) -> Path | None:
    """Where the converted (Hugging Face layout) copy of a GGUF model is cached, or None
    for a model that is not a GGUF file.

    ``<cache_dir()>/models/converted/<gguf stem>-<sha256 of the file, 16 hex>-<dtype>-
    tf<transformers version>``: the content hash, not the path, identifies the weights,
    and a new transformers version converts again.
    """
    if not spec.gguf_file:
        return None
    gguf = Path(spec.path) / spec.gguf_file
    stat = gguf.stat()
    key = f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    digest = _SHA_MEMO.get(key)
    if digest is None:
        digest = _SHA_MEMO[key] = _file_sha256(gguf)
    name = f"{model_slug(gguf.stem)}-{digest[:16]}-{dtype}-tf{dist_version('transformers')}"
    return cache_dir() / "models" / "converted" / name


_SHA_MEMO: dict[str, str] = {}


def cached_complete(folder: Path) -> bool:
    """Whether ``folder`` holds a complete converted model (its marker file, current format)."""
    try:
        marker = json.loads((folder / CONVERTED_MARKER).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(marker, dict) and marker.get("format") == CONVERTED_FORMAT


def save_converted(model, tokenizer, target: Path, spec, dtype: str) -> bool:
    """Write the converted model into ``target`` atomically; True when this call wrote it.

    Everything goes to a temporary sibling folder (marker file last) that is renamed
    into place in one step; when another process got there first its copy is kept and
    ours removed. A failure (disk full, read-only cache) leaves no partial entry and is
    not an error: the next load converts again.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        from safetensors.torch import save_model

        # transformers refuses save_pretrained on a model loaded from GGUF (it counts as
        # quantized); its weights are plain tensors after conversion, so save them and a
        # config without the GGUF quantization entry, which from_pretrained reads back.
        config = copy.deepcopy(model.config)
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.save_pretrained(tmp)
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(tmp)
        save_model(model, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        tokenizer.save_pretrained(tmp)
        (tmp / CONVERTED_MARKER).write_text(json.dumps(
            {"format": CONVERTED_FORMAT, "gguf_file": spec.gguf_file, "revision": spec.revision,
             "dtype": dtype, "transformers": dist_version("transformers")}, sort_keys=True))
        for entry in [tmp, *tmp.rglob("*")]:
            os.chmod(entry, 0o755 if entry.is_dir() else 0o644)
        try:
            os.rename(tmp, target)
        except OSError:
            if cached_complete(target):
                return False  # another process wrote it first
            raise
        return True
    except (OSError, ValueError, RuntimeError):
        return False
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


__all__ = ["CONVERTED_FORMAT", "CONVERTED_MARKER", "cache_dir", "cached_complete",
           "converted_dir", "dist_version", "model_slug", "quiet_gguf_conversion",
           "save_converted"]
