"""``nex explore``: a static site of a scored corpus (responses with their phases, weighted
neurons with the rows that fire them).

    nex explore TABLES --out DIR [--store STORE] [--engine local|beam|dask] [--workers N]
                [--scheduler ADDRESS] [--neurons 50] [--contexts 20] [--top 20]
                [--bottom 20] [--random 20] [--seed 0] [--traces ID ...]
                [--table-rows 1000] [--context-pages 200] [--prompts SOURCE]
                [--tokenizer PATH] [--labels FILE] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys

from nex_transforms.errors import CommandError

from ..explore import write_site


def cmd_explore(args: argparse.Namespace) -> int:
    if args.engine != "dask" and (args.scheduler is not None or args.workers is not None):
        raise CommandError(f"--scheduler/--workers: expected only with --engine dask, "
                           f"got --engine {args.engine}")
    if args.workers is not None and args.workers < 1:
        raise CommandError(f"--workers: expected an integer >= 1, got {args.workers}")
    options = {"scheduler": args.scheduler, "workers": args.workers} \
        if args.engine == "dask" else {}
    summary = write_site(args.tables, args.out, store=args.store, engine=args.engine,
                         engine_options=options, neurons_per_sign=args.neurons,
                         per_neuron=args.contexts, top=args.top, bottom=args.bottom,
                         random=args.random, seed=args.seed, traces=args.traces,
                         table_rows=args.table_rows, context_pages=args.context_pages,
                         prompts=args.prompts, tokenizer=args.tokenizer, labels=args.labels)
    for note in summary["notes"]:
        print(f"nex: warning: {note}", file=sys.stderr)
    if args.json:
        print(json.dumps(summary, sort_keys=True, default=str))
        return 0
    job = summary["contexts_job"]
    print(f"explorer site of {len(summary['models'])} model(s) in {summary['out']}: "
          f"{summary['response_pages']} response pages, {summary['neuron_pages']} neuron pages "
          f"({summary['context_rows']} contexts from {job['n_traces']} traces in "
          f"{job['n_units']} units, {summary['options']['engine']} engine, "
          f"{job['seconds']:.1f} s); open {summary['out']}/index.html")
    return 0


def register(subparsers) -> None:
    """Add ``explore``: the static explorer site of a scored corpus."""
    p = subparsers.add_parser(
        "explore", help="write a static site to read a scored corpus: responses row by row "
                        "with their E/X phases, weighted neurons with the rows that fire them",
        description="Write a self-contained static site (plain HTML, inline SVG, no server "
                    "needed) of a `nex score --phases` tables folder to --out: an index per "
                    "model (NEX, log-gap, regime and coverage numbers, GMF histogram, a "
                    "sortable responses table), a page per chosen response (prompt, text by "
                    "row, E rows shaded, cycles marked, novelty per row, the neurons each "
                    "credited cycle credited) and a page per weighted neuron with its top "
                    "rows (the neuron-contexts job, run on --engine).")
    p.add_argument("tables", help="tables folder written by `nex score --phases`")
    p.add_argument("--out", required=True, help="site folder (replaced atomically)")
    p.add_argument("--store", default=None,
                   help="the activation store the tables were scored from (default: "
                        "run.json's; its fingerprint must match)")
    p.add_argument("--engine", choices=("local", "beam", "dask"), default="local",
                   help="engine of the neuron-contexts job (default %(default)s)")
    p.add_argument("--workers", type=int, default=None,
                   help="dask: local cluster worker processes (default: CPU count)")
    p.add_argument("--scheduler", default=None,
                   help="dask: address of an existing scheduler (tcp://HOST:PORT)")
    p.add_argument("--neurons", type=int, default=50,
                   help="weighted neurons with a page per model and sign: the largest "
                        "positive and most negative weights (default %(default)s)")
    p.add_argument("--contexts", type=int, default=20,
                   help="top rows per neuron, across the whole store (default %(default)s)")
    p.add_argument("--top", type=int, default=20,
                   help="response pages per model: highest GMFs (default %(default)s)")
    p.add_argument("--bottom", type=int, default=20,
                   help="response pages per model: lowest GMFs (default %(default)s)")
    p.add_argument("--random", type=int, default=20,
                   help="response pages per model: random others (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random choices (default 0)")
    p.add_argument("--traces", nargs="+", default=None, metavar="ID",
                   help="pages for these responses instead of --top/--bottom/--random")
    p.add_argument("--table-rows", type=int, default=1000,
                   help="rows of a model's responses table; beyond, a stated sample "
                        "(default %(default)s)")
    p.add_argument("--context-pages", type=int, default=200,
                   help="more response pages per model for responses holding top contexts "
                        "(default %(default)s)")
    p.add_argument("--prompts", default=None,
                   help="the capture's prompt source (gsm8k, math500, arithmetic or a JSONL/"
                        "Parquet file) to show prompts; checked against the store's digests")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer folder, .gguf file or name for the row text (default: the "
                        "capture's model, when it can be found)")
    p.add_argument("--labels", default=None,
                   help="labels file for grades (as nex eval; default: the store's reference "
                        "answers)")
    p.add_argument("--json", action="store_true", help="print site.json to stdout")
    p.set_defaults(func=cmd_explore)
