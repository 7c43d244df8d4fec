"""``nex merge FAMILY.yaml``: build merged variants of same-architecture checkpoints.

The family file lists variants; each is translated into a mergekit 0.1.5 configuration
and merged with mergekit used as a library (``mergekit.merge.run_merge``), on CPU, in
float32. Every output is a loadable model folder with the tokenizer of its first input
model, a ``README.md`` model card (mergekit's, with the recipe) and a ``testbed.json``
card recording the recipe (family entry and the exact mergekit configuration).

Family file (paths relative to the file's folder)::

    base: checkpoints/step-000000        # default base for task arithmetic/TIES/DARE
    variants:
      - name: linear-mid-final
        method: linear                    # weights normalised to sum 1 (mergekit default)
        models: [{model: checkpoints/step-000120, weight: 0.5},
                 {model: checkpoints/step-000240, weight: 0.5}]
      - name: slerp-mid-final
        method: slerp                     # base = first model; t = 0 gives it exactly
        models: [checkpoints/step-000120, checkpoints/step-000240]
        t: 0.5
      - name: ta
        method: task_arithmetic           # base + sum_i weight_i (model_i - base)
        models: [{model: checkpoints/step-000240, weight: 1.2}]
      - name: ties
        method: ties                      # trim to density, elect signs by summed delta
        models: [{model: ..., weight: 1.0, density: 0.5}, ...]
      - name: dare
        method: dare_linear               # or dare_ties; random drop with 1 - density
        seed: 0
        models: [{model: ..., weight: 1.0, density: 0.5}]

Optional per variant: ``base`` (overrides the family's), ``normalize``, ``lambda``,
``seed`` (DARE's random drop; default 0). A variant whose output folder already has a
``testbed.json`` with the same recipe is kept (reruns skip finished merges).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from nex_transforms.errors import expected

from .errors import TestbedError

METHODS = ("linear", "slerp", "task_arithmetic", "ties", "dare_ties", "dare_linear")
NEEDS_BASE = ("task_arithmetic", "ties", "dare_ties", "dare_linear")
CARD_NAME = "testbed.json"


def load_family(path: str | Path) -> dict:
    """Read and validate a family YAML file; returns ``{"root", "base", "variants"}`` with
    model paths resolved against the file's folder."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise TestbedError(expected("family file", "an existing YAML file", str(path)))
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise TestbedError(expected(f"family file {path}", "valid YAML",
                                    str(err).splitlines()[0])) from None
    if not isinstance(data, dict) or not isinstance(data.get("variants"), list) \
            or not data["variants"]:
        raise TestbedError(expected(f"family file {path}", "a mapping with a non-empty "
                                    "'variants' list", type(data).__name__))
    root = path.parent
    base = data.get("base")
    names: set[str] = set()
    variants = []
    for number, raw in enumerate(data["variants"], 1):
        where = f"family file {path} variant {number}"
        if not isinstance(raw, dict):
            raise TestbedError(expected(where, "a mapping", type(raw).__name__))
        name, method = raw.get("name"), raw.get("method")
        if not isinstance(name, str) or not name or "/" in name or ":" in name or name in names:
            raise TestbedError(expected(f"{where} name", "a unique name without '/' or ':'",
                                        repr(name)))
        names.add(name)
        if method not in METHODS:
            raise TestbedError(expected(f"{where} ({name}) method", f"one of {METHODS}",
                                        repr(method)))
        models = raw.get("models")
        if not isinstance(models, list) or not models:
            raise TestbedError(expected(f"{where} ({name}) models", "a non-empty list",
                                        repr(models)))
        entries = []
        for item in models:
            entry = {"model": item} if isinstance(item, str) else dict(item or {})
            if not isinstance(entry.get("model"), str):
                raise TestbedError(expected(f"{where} ({name}) model entry",
                                            "a path or {model: PATH, weight: W, density: D}",
                                            repr(item)))
            for key in ("weight", "density"):
                if key in entry and not isinstance(entry[key], (int, float)):
                    raise TestbedError(expected(f"{where} ({name}) {key}", "a number",
                                                repr(entry[key])))
            if "density" in entry and not 0 < entry["density"] <= 1:
                raise TestbedError(expected(f"{where} ({name}) density", "a number in (0, 1]",
                                            entry["density"]))
            entry["model"] = str((root / entry["model"]).resolve())
            entries.append(entry)
        variant_base = raw.get("base", base)
        if method in NEEDS_BASE and not variant_base:
            raise TestbedError(expected(f"{where} ({name}) base", f"a base model for {method} "
                                        "(the variant's or the family's 'base')", "none"))
        if method == "slerp":
            if len(entries) != 2:
                raise TestbedError(expected(f"{where} ({name}) models", "exactly 2 for slerp",
                                            len(entries)))
            t = raw.get("t")
            if not isinstance(t, (int, float)) or not 0 <= t <= 1:
                raise TestbedError(expected(f"{where} ({name}) t", "a number in [0, 1]", repr(t)))
        for entry in entries:
            if not (Path(entry["model"]) / "config.json").is_file():
                raise TestbedError(expected(f"{where} ({name}) model", "a model folder with a "
                                            "config.json", entry["model"]))
        variant = {k: v for k, v in raw.items() if k not in ("models", "base")}
        variant["models"] = entries
        if method in NEEDS_BASE:
            variant["base"] = str((root / variant_base).resolve())
            if not (Path(variant["base"]) / "config.json").is_file():
                raise TestbedError(expected(f"{where} ({name}) base", "a model folder with a "
                                            "config.json", variant["base"]))
        variants.append(variant)
    return {"root": str(root), "variants": variants}


def mergekit_config(variant: dict) -> dict:
    """The mergekit configuration (as a plain dict) of one validated family variant."""
    method = variant["method"]
    config: dict = {"merge_method": method, "dtype": "float32"}
    params: dict = {}
    for key in ("normalize", "lambda"):
        if key in variant:
            params[key] = variant[key]
    if method == "slerp":
        first, second = variant["models"]
        config["base_model"] = first["model"]
        config["models"] = [{"model": first["model"]}, {"model": second["model"]}]
        params["t"] = float(variant["t"])
    else:
        models = []
        for entry in variant["models"]:
            entry_params = {"weight": float(entry.get("weight", 1.0))}
            if method in ("ties", "dare_ties", "dare_linear"):
                entry_params["density"] = float(entry.get("density", 1.0))
            models.append({"model": entry["model"], "parameters": entry_params})
        config["models"] = models
        if method in NEEDS_BASE:
            config["base_model"] = variant["base"]
    if params:
        config["parameters"] = params
    return config


def merge_variant(variant: dict, out: str | Path) -> Path:
    """Merge one variant into ``out`` (built in a staging folder, renamed when complete)."""
    import torch
    from mergekit.config import MergeConfiguration
    from mergekit.merge import MergeOptions, run_merge

    out = Path(out)
    config = mergekit_config(variant)
    recipe = {"name": variant["name"], "method": variant["method"],
              "family_entry": {k: v for k, v in variant.items()}, "mergekit_config": config,
              "mergekit_version": _version("mergekit")}
    card_path = out / CARD_NAME
    if card_path.is_file():
        try:
            if json.loads(card_path.read_text()).get("recipe") == recipe:
                return out
        except json.JSONDecodeError:
            pass
    staging = out.with_name(f".{out.name}.staging")
    if staging.exists():
        shutil.rmtree(staging)
    seed = int(variant.get("seed", 0))
    torch.manual_seed(seed)
    options = MergeOptions(copy_tokenizer=False, lazy_unpickle=False, random_seed=seed,
                           quiet=True, cuda=False, write_model_card=True,
                           safe_serialization=True)
    run_merge(MergeConfiguration.model_validate(config), str(staging), options)
    first = Path(variant["models"][0]["model"])
    _copy_tokenizer(first, staging)
    generation = first / "generation_config.json"
    if generation.is_file():
        shutil.copy2(generation, staging / generation.name)
    (staging / CARD_NAME).write_text(json.dumps(
        {"kind": "merge", "recipe": recipe, "step": None}, indent=1, sort_keys=True) + "\n")
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    return out


def _copy_tokenizer(source: Path, target: Path) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                 "chat_template.jinja"):
        if (source / name).is_file():
            shutil.copy2(source / name, target / name)


def _version(dist: str) -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def merge_family(path: str | Path, out: str | Path, only: list[str] | None = None,
                 log=None) -> dict[str, str]:
    """Merge every variant of a family file into ``out/NAME``; returns name -> folder."""
    family = load_family(path)
    variants = family["variants"]
    if only:
        unknown = sorted(set(only) - {v["name"] for v in variants})
        if unknown:
            raise TestbedError(expected("--only", "variant names of the family file", unknown))
        variants = [v for v in variants if v["name"] in only]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    done = {}
    for variant in variants:
        folder = merge_variant(variant, out / variant["name"])
        done[variant["name"]] = str(folder)
        if log is not None:
            log(f"merged {variant['name']} ({variant['method']}) -> {folder}")
    return done
