"""Data: a dataset's contract, ingest (every row lands in raw/D; the gate splits it into clean/D and
quarantine/D, exactly once per batch) and the seeded synthetic source. `validation/` is the gate.
Ingest's parts: `schemas` (the tables' Arrow schemas and the contract-type map), `ledger` (batches/D),
`raw_writer` (the pipelined raw commit and the staging), `batch_commit` (raw -> clean -> quarantine -> ledger),
`encoding` (the Parquet encoding per column), `ingest` (one batch, a source, the summary).
Imports storage only."""

from loopline._exports import lazy_exports

_EXPORTS = {
    "Contract": "contracts",
    "load_contract": "contracts",
    "parse_contract": "contracts",
    "BatchResult": "ingest",
    "ingest_source": "ingest",
    "ingest_file": "ingest",
    "summarise": "ingest",
    "summarise_dicts": "ingest",
    "generate_frame": "synthetic",
    "generate_source": "synthetic",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
