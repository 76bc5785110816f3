"""The ingest stage: files of summaries in, deduplicated ``Summary`` rows out.

``ingest_paths(engine, paths)`` reads files and folders with the reader registered for each extension
(``newsletter.readers`` entry points); ``ingest_items(engine, items, origin=...)`` is the shared upsert
for summaries that arrive another way (HTTP, feeds).
"""

from newsletter.ingest.base import (
    Reader,
    SummaryIn,
    compute_uid,
    reader_for,
    readers_by_extension,
    validate_item,
)
from newsletter.ingest.store import (
    IngestReport,
    Rejection,
    find_files,
    ingest_items,
    ingest_paths,
)

__all__ = [
    "IngestReport",
    "Reader",
    "Rejection",
    "SummaryIn",
    "compute_uid",
    "find_files",
    "ingest_items",
    "ingest_paths",
    "reader_for",
    "readers_by_extension",
    "validate_item",
]
