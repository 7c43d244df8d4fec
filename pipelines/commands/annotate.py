"""``nex annotate``: human E/X span annotations against the HMM labels.

    nex annotate agree ANNOTATIONS.jsonl --tables TABLES [--model-id ID] [--row-size N] [--json]
"""

from __future__ import annotations

import argparse
import json

from nex_transforms.errors import CommandError

from ..store import ActivationStore
from ..tables import read_run, read_table
from ..testbed.annotations import agreement, load_annotations


def _row_size(tables: str) -> int | None:
    try:
        store = read_run(tables).get("store", {}).get("path")
        return int(ActivationStore.open(store).metadata["capture"]["row_size"])
    except Exception:  # noqa: BLE001 - the caller asks for --row-size instead
        return None


def cmd_agree(args: argparse.Namespace) -> int:
    annotations = load_annotations(args.annotations)
    row_size = args.row_size or _row_size(args.tables)
    if row_size is None or row_size < 1:
        raise CommandError(f"--row-size: expected the capture's row size (>= 1; not found in "
                           f"the store of {args.tables}), got {args.row_size}")
    try:
        phases = read_table(args.tables, "phases")
    except Exception as err:  # noqa: BLE001 - reworded: the fix is --phases
        raise CommandError(f"tables {args.tables}: expected a phases table (score with "
                           f"--phases), got {err}") from None
    result = agreement(annotations, phases, read_table(args.tables, "responses"), row_size,
                       model_id=args.model_id)
    if args.out:
        from pathlib import Path

        Path(args.out).write_text(json.dumps(result, indent=1, default=float) + "\n")
    if args.json:
        print(json.dumps(result, sort_keys=True, default=float))
    else:
        span = result["span"]
        print(f"{result['n_annotations']} annotated responses, {result['n_rows_compared']} rows "
              f"compared (row size {row_size}): Cohen's kappa {result['kappa']:.3f}, row "
              f"agreement {result['row_agreement']:.3f}, E fraction gold "
              f"{result['gold_e_fraction']:.3f} / HMM {result['hmm_e_fraction']:.3f}; E-span F1 "
              f"{span['f1']:.3f} (P {span['precision']:.3f}, R {span['recall']:.3f}, "
              f"{span['matched']} of {span['n_gold']} gold / {span['n_predicted']} HMM spans)")
    return 0


def register(subparsers) -> None:
    """Add ``annotate``: agreement of human E/X annotations with the HMM labels."""
    p = subparsers.add_parser(
        "annotate", help="human E/X span annotations: agreement with the HMM labels")
    sub = p.add_subparsers(dest="annotate_command", metavar="SUBCOMMAND", required=True)
    agree = sub.add_parser(
        "agree", help="Cohen's kappa per row and E-span F1 against a phases table",
        description="Compare span annotations (JSONL: trace_id or prompt_id+sample_index, "
                    "unit token|row, spans [{start, end, label E|X}]) with the HMM's E/X "
                    "labels of `nex score --phases` tables.")
    agree.add_argument("annotations", help="annotation JSONL file")
    agree.add_argument("--tables", required=True, help="tables scored with --phases")
    agree.add_argument("--model-id", default=None, help="model of the annotated traces")
    agree.add_argument("--row-size", type=int, default=None,
                       help="tokens per row (default: from the store's capture metadata)")
    agree.add_argument("--out", default=None, help="write the full result as JSON here")
    agree.add_argument("--json", action="store_true", help="print the result as JSON")
    agree.set_defaults(func=cmd_agree)
