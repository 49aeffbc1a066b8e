"""``rrpo feedback``: inspect, export and rate the records a live pipeline collected.

    rrpo feedback stats DB [--json]
    rrpo feedback export DB OUT [--rated-only]   # OUT: .jsonl, .parquet, or a folder
    rrpo feedback rate DB RECORD_ID SCORE [--comment TEXT]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

NAME = "feedback"
HELP = "inspect, export and rate feedback records (SQLite store)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="feedback_command", metavar="{stats,export,rate}")
    actions.required = True

    stats = actions.add_parser("stats", help="counts, ratings, mean k of a feedback store")
    stats.add_argument("db", help="path of the feedback store (SQLite file)")
    stats.add_argument("--json", action="store_true", help="print the numbers as JSON")

    export = actions.add_parser("export", help="write the records as JSONL, Parquet or a dataset folder")
    export.add_argument("db", help="path of the feedback store (SQLite file)")
    export.add_argument(
        "out",
        help="output: *.jsonl (one record per line), *.parquet, or a folder "
        "(datasets.Dataset.save_to_disk)",
    )
    export.add_argument("--rated-only", action="store_true", help="only records with a rating")

    rate = actions.add_parser("rate", help="attach a user rating to one record")
    rate.add_argument("db", help="path of the feedback store (SQLite file)")
    rate.add_argument("record_id", help="id of the record to rate")
    rate.add_argument("score", type=float, help="the rating (e.g. 0..1 or 1..5)")
    rate.add_argument("--comment", default=None, help="optional free-text comment")


def run(args: argparse.Namespace) -> int:
    from rrpo.feedback import FeedbackStore, NotAFeedbackStoreError, SchemaVersionError, UnknownRecordError

    try:
        store = FeedbackStore(args.db, create=False)
    except (FileNotFoundError, NotAFeedbackStoreError, SchemaVersionError) as err:
        # A typo, a file that is not SQLite, another app's database: one line, exit 2.
        print(f"rrpo feedback: error: {err}", file=sys.stderr)
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
    for version, count in stats["rerankers"].items():
        lines.append(f"reranker         {version}: {count}")
    return "\n".join(lines)


def _export(store, args: argparse.Namespace) -> int:
    out = Path(args.out).expanduser()
    if out.suffix in {".jsonl", ".json"}:
        count = store.export_jsonl(out, rated_only=args.rated_only)
    else:
        dataset = store.export(rated_only=args.rated_only)
        if out.suffix == ".parquet":
            out.parent.mkdir(parents=True, exist_ok=True)
            dataset.to_parquet(str(out))
        else:
            dataset.save_to_disk(str(out))
        count = len(dataset)
    print(f"exported {count} records to {out}")
    return 0


def _rate(store, args: argparse.Namespace) -> int:
    store.rate(args.record_id, args.score, comment=args.comment)
    print(f"rated {args.record_id}: {args.score:g}")
    return 0
