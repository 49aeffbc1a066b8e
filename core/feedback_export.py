"""Feedback records out of the store: JSONL, Parquet, a ``datasets`` dataset.

Every export streams from :meth:`FeedbackStore.iter_records` (one page of records in
memory at a time), so exporting a fleet's store costs a page of memory, not the store.
Parquet is written row group by row group with pyarrow (a dependency of ``datasets``);
a dataset folder is that Parquet file loaded memory-mapped and saved with
``save_to_disk``. Records are redacted again on the way out (a store written by an
older rrpo may hold what this one strips).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from .feedback_sqlite import create_private

_ROW_GROUP = 2000  # records per Parquet row group: bounded memory, reasonable files


def _datasets() -> Any:
    try:
        import datasets
    except ImportError as err:
        raise ImportError(
            "exporting feedback as a dataset or Parquet needs the 'datasets' package: pip install 'rrpo[train]'"
        ) from err
    return datasets


def export_jsonl(store: Any, path: str | Path, **filters: Any) -> int:
    """One JSON object per record; a new file is readable by its owner only."""
    from .feedback import _to_json, record_to_dict

    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    create_private(path)
    count = 0
    with path.open("w", encoding="utf-8") as handle:
        for record in store.iter_records(**filters):
            handle.write(_to_json(record_to_dict(record)) + "\n")
            count += 1
    return count


def export_dataset(store: Any, **filters: Any) -> Any:
    """The records as an in-memory ``datasets.Dataset``."""
    datasets = _datasets()
    features = dataset_features(datasets)
    columns: dict[str, list] = {name: [] for name in features}
    for row in _rows(store, filters):
        for name, value in row.items():
            columns[name].append(value)
    return datasets.Dataset.from_dict(columns, features=features)


def export_parquet(store: Any, path: str | Path, **filters: Any) -> int:
    """Stream the records into a Parquet file with the dataset's schema (the
    ``datasets`` features ride along in the file's metadata, as ``to_parquet`` does)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    datasets = _datasets()
    features = dataset_features(datasets)
    schema = features.arrow_schema.with_metadata(
        {"huggingface": json.dumps({"info": {"features": features.to_dict()}})}
    )
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    create_private(path)
    count = 0
    with pq.ParquetWriter(str(path), schema) as writer:
        batch: list[dict[str, Any]] = []
        for row in _rows(store, filters):
            batch.append(row)
            if len(batch) >= _ROW_GROUP:
                writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                count, batch = count + len(batch), []
        if batch:  # no rows: a file of the schema and no row group (readers choke on empty ones)
            writer.write_table(pa.Table.from_pylist(batch, schema=schema))
            count += len(batch)
    return count


def save_dataset_dir(store: Any, out: str | Path, **filters: Any) -> int:
    """A ``datasets.load_from_disk`` folder, built from a streamed Parquet file (so the
    records pass through memory-mapped Arrow, never a Python list of the store)."""
    datasets = _datasets()
    scratch = Path(tempfile.mkdtemp(prefix="rrpo-export-"))
    try:
        if export_parquet(store, scratch / "records.parquet", **filters) == 0:
            # datasets cannot load a Parquet file without rows; an empty dataset is small.
            features = dataset_features(datasets)
            empty = datasets.Dataset.from_dict({name: [] for name in features}, features=features)
            empty.save_to_disk(str(Path(out).expanduser()), num_shards=1)  # 0 shards would not load back
            return 0
        dataset = datasets.Dataset.from_parquet(
            str(scratch / "records.parquet"), features=dataset_features(datasets),
            cache_dir=str(scratch / "cache"), keep_in_memory=False,
        )
        dataset.save_to_disk(str(Path(out).expanduser()))
        count = len(dataset)
        del dataset  # its memory map lives in scratch
        return count
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _rows(store: Any, filters: dict[str, Any]) -> Iterator[dict[str, Any]]:
    from .feedback import _to_json, record_to_dict

    for record in store.iter_records(**filters):
        row = record_to_dict(record)
        row["candidates"] = [
            {"id": c["id"], "title": c["title"], "text": c["text"], "score": c["score"],
             "metadata": _to_json(c["metadata"])}
            for c in row["candidates"]
        ]  # fmt: skip
        row["metadata"] = _to_json(row["metadata"])
        yield row


def dataset_features(datasets: Any) -> Any:
    # datasets >= 4 spells a list feature ``List``; older versions ``Sequence``.
    list_of = getattr(datasets, "List", None) or datasets.Sequence
    value = datasets.Value
    candidate = {
        "id": value("string"),
        "title": value("string"),
        "text": value("string"),
        "score": value("float64"),
        "metadata": value("string"),
    }
    return datasets.Features(
        {
            "id": value("string"),
            "created_at": value("float64"),
            "query": value("string"),
            "candidates": list_of(candidate),
            "kept_ids": list_of(value("string")),
            "kept_scores": list_of(value("float64")),
            "k": value("int64"),
            "answer": value("string"),
            "latency_ms": value("float64"),
            "reranker": value("string"),
            "rating": value("float64"),
            "comment": value("string"),
            "metadata": value("string"),
        }
    )
