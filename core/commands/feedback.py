"""``rrpo feedback``: inspect, export and rate the records a live pipeline collected.

    rrpo feedback stats STORE [--json]
    rrpo feedback export STORE OUT [--rated-only] [--since T] [--until T] [--reranker-version V]
    rrpo feedback rate STORE RECORD_ID SCORE [--comment TEXT]

STORE is an SQLite file or a ``postgresql://`` URL (the password is best left to
PGPASSWORD or ~/.pgpass; it is never printed). OUT: .jsonl, .parquet, or a folder.
Exports stream, so a fleet's store exports in a page of memory.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

NAME = "feedback"
HELP = "inspect, export and rate feedback records (SQLite file or PostgreSQL server)"
STORE_HELP = "the feedback store: an SQLite file, or a postgresql://user@host/db URL"


def add_filter_arguments(parser: argparse.ArgumentParser) -> None:
    """Which records to read: shared by ``rrpo feedback export`` and ``rrpo train --feedback``."""
    parser.add_argument("--rated-only", action="store_true", help="only records with a rating")
    parser.add_argument(
        "--since", default=None, metavar="TIME",
        help="only records created at or after TIME: Unix seconds, an ISO date (2026-12-01T08:00, UTC), "
        "or a duration ago (90m, 24h, 7d, 2w)",
    )  # fmt: skip
    parser.add_argument("--until", default=None, metavar="TIME", help="only records created before TIME (as --since)")
    parser.add_argument(
        "--reranker-version", action="append", default=None, metavar="VERSION", dest="reranker_version",
        help="only records served by this reranker version (as stored, e.g. minilm-l6@3fa9c2d1e0b4; "
        "a trailing * matches a prefix: minilm-l6@*); repeat for several",
    )  # fmt: skip


def record_filters(args: argparse.Namespace) -> dict:
    """The keyword arguments of ``FeedbackStore.iter_records`` from the options above."""
    return {
        "rated_only": bool(getattr(args, "rated_only", False)),
        "since": getattr(args, "since", None),
        "until": getattr(args, "until", None),
        "reranker": getattr(args, "reranker_version", None),
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="feedback_command", metavar="{stats,export,rate}")
    actions.required = True

    stats = actions.add_parser("stats", help="counts, ratings, mean k of a feedback store")
    stats.add_argument("db", help=STORE_HELP)
    stats.add_argument("--json", action="store_true", help="print the numbers as JSON")

    export = actions.add_parser("export", help="write the records as JSONL, Parquet or a dataset folder")
    export.add_argument("db", help=STORE_HELP)
    export.add_argument(
        "out",
        help="output: *.jsonl (one record per line), *.parquet, or a folder "
        "(datasets.Dataset.save_to_disk)",
    )
    add_filter_arguments(export)

    rate = actions.add_parser("rate", help="attach a user rating to one record")
    rate.add_argument("db", help=STORE_HELP)
    rate.add_argument("record_id", help="id of the record to rate")
    rate.add_argument("score", type=float, help="the rating (e.g. 0..1 or 1..5)")
    rate.add_argument("--comment", default=None, help="optional free-text comment")


def run(args: argparse.Namespace) -> int:
    from rrpo.feedback import FeedbackStore, SchemaVersionError, UnknownRecordError

    try:
        store = FeedbackStore(args.db, create=False)
    except (OSError, ValueError, ImportError, SchemaVersionError) as err:
        # A typo, a file that is not SQLite, another app's database, a server that does
        # not answer, a malformed URL: one line (never the URL's password), exit 2.
        print(f"rrpo feedback: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    try:
        handler = {"stats": _stats, "export": _export, "rate": _rate}[args.feedback_command]
        return handler(store, args)
    except UnknownRecordError as err:
        print(f"rrpo feedback: {err}", file=sys.stderr)
        return 1
    finally:
        store.close()


def _stats(store, args: argparse.Namespace) -> int:
    stats = store.stats()
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0
    print(format_stats(stats))
    return 0


def format_stats(stats: dict) -> str:
    def num(value, fmt="{:.3g}"):
        return "-" if value is None else fmt.format(value)

    lines = [
        f"feedback store   {stats['path']} (schema v{stats['schema_version']})",
        f"records          {stats['count']}",
        f"answered         {stats['answered']}",
        f"rated            {stats['rated']}  (mean rating {num(stats['mean_rating'])})",
        f"mean k           {num(stats['mean_k'])}  of {num(stats['mean_candidates'])} candidates",
        f"mean latency     {num(stats['mean_latency_ms'], '{:.1f}')} ms",
    ]
    for version, row in stats["by_reranker"].items():
        lines.append(
            f"reranker         {version}: {row['count']} records, {row['rated']} rated "
            f"(mean rating {num(row['mean_rating'])}), mean k {num(row['mean_k'])}"
        )
    return "\n".join(lines)


def _export(store, args: argparse.Namespace) -> int:
    from rrpo.feedback_export import save_dataset_dir

    out = Path(args.out).expanduser()
    filters = record_filters(args)
    if out.suffix in {".jsonl", ".json"}:
        count = store.export_jsonl(out, **filters)
    elif out.suffix == ".parquet":
        count = store.export_parquet(out, **filters)
    else:
        count = save_dataset_dir(store, out, **filters)
    print(f"exported {count} records to {out}")
    return 0


def _rate(store, args: argparse.Namespace) -> int:
    store.rate(args.record_id, args.score, comment=args.comment)
    print(f"rated {args.record_id}: {args.score:g}")
    return 0
