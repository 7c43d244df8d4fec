"""``nex store``: inspect, verify, finalize an activation store; import/export row caches."""

from __future__ import annotations

import argparse
import json

from ..store import ActivationStore, StoreError
from ..store.fs import add_storage_options_flag, apply_storage_options
from ..store.rows_cache_io import export_rows_cache, import_rows_cache
from ..store.verify import verify_store


def _storage(args: argparse.Namespace) -> None:
    apply_storage_options(getattr(args, "storage_options", None))


def cmd_info(args: argparse.Namespace) -> int:
    _storage(args)

    info = ActivationStore.open(args.store).info()
    if args.json:
        print(json.dumps(info, sort_keys=True))
        return 0
    for key in ("schema_version", "traces", "rows", "entries", "aggregate_entries", "tokens",
                "parts", "bytes_on_disk", "bytes_per_entry", "saturated_masses", "finalized"):
        value = info[key]
        print(f"{key}: {value:.3f}" if isinstance(value, float) else f"{key}: {value}")
    for model, count in info["models"].items():
        print(f"model {model}: {count} traces")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    _storage(args)

    report = verify_store(ActivationStore.open(args.store))
    if not report.ok:
        more = len(report.problems) - 1
        suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
        raise StoreError(f"verify {args.store}: {report.problems[0]}{suffix}")
    print(f"ok: {report.parts} parts, {report.traces} traces, {report.rows} rows, "
          f"{report.entries} entries; every invariant holds")
    return 0


def cmd_finalize(args: argparse.Namespace) -> int:
    _storage(args)

    store = ActivationStore.open(args.store)
    ActivationStore.create(args.store, store.metadata).finalize()
    print(f"finalized {args.store}: {len(store.parts())} parts")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    _storage(args)

    store, parts = import_rows_cache(args.cache, args.store, model_id=args.model_id,
                                     name=args.name, traces_per_part=args.traces_per_part)
    if not args.no_finalize:
        store.finalize()
    info = store.info()
    print(f"imported {args.cache} into {args.store} as {len(parts)} part(s); store holds "
          f"{info['traces']} traces, {info['entries']} entries, "
          f"{info['bytes_per_entry']:.3f} bytes per entry")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    _storage(args)

    store = ActivationStore.open(args.store)
    result = export_rows_cache(store, args.cache, model_id=args.model_id)
    print(f"exported {args.store} to {result.path}: {result.traces} traces; masses clipped "
          f"to the float16 range: {result.clipped_masses} row, "
          f"{result.clipped_aggregate_masses} aggregate")
    return 0


def register(subparsers) -> None:
    """Add the ``store`` group: info, verify, finalize, import-rows-cache, export-rows-cache."""
    group = subparsers.add_parser("store", help="inspect and convert an activation store")
    sub = group.add_subparsers(dest="store_command", metavar="ACTION", required=True)

    info = sub.add_parser("info", help="counts, sizes and models of STORE")
    info.add_argument("store")
    info.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_storage_options_flag(info)
    info.set_defaults(func=cmd_info)

    verify = sub.add_parser("verify", help="check every invariant of STORE")
    verify.add_argument("store")
    add_storage_options_flag(verify)
    verify.set_defaults(func=cmd_verify)

    finalize = sub.add_parser("finalize", help="write the consolidated manifest")
    finalize.add_argument("store")
    add_storage_options_flag(finalize)
    finalize.set_defaults(func=cmd_finalize)

    imp = sub.add_parser("import-rows-cache", help="import a row cache (lossless) into STORE")
    imp.add_argument("cache")
    imp.add_argument("store")
    imp.add_argument("--model-id", default="imported",
                     help="model id of the imported traces (default %(default)s)")
    imp.add_argument("--name", default=None,
                     help="trace id prefix (default: the cache directory name)")
    imp.add_argument("--traces-per-part", type=int, default=1000,
                     help="traces per store part (default %(default)s)")
    imp.add_argument("--no-finalize", action="store_true",
                     help="skip writing the consolidated manifest")
    add_storage_options_flag(imp)
    imp.set_defaults(func=cmd_import)

    exp = sub.add_parser("export-rows-cache", help="write STORE in the row-cache layout")
    exp.add_argument("store")
    exp.add_argument("cache")
    exp.add_argument("--model-id", default=None,
                     help="export only this model's traces (default: all, manifest order)")
    add_storage_options_flag(exp)
    exp.set_defaults(func=cmd_export)
