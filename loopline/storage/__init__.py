"""Storage: where everything lives. The lake (a local folder or an S3 prefix, through one `Lake`),
Delta table helpers with idempotent commits, dataset sources (file, folder, s3:// prefix) and atomic
file writes. Imports no other stage."""

from loopline._exports import lazy_exports

_EXPORTS = {
    "Lake": "lake",
    "TABLE_KINDS": "lake",
    "is_s3_uri": "lake",
    "make_s3_client": "lake",
    "s3_storage_options": "lake",
    "open_table": "delta",
    "table_version": "delta",
    "append_once": "delta",
    "read_column": "delta",
    "list_source": "sources",
    "read_chunks": "sources",
    "atomic_write_bytes": "files",
    "atomic_write_text": "files",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
