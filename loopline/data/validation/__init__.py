"""The validation gate: a contract compiles to checks (`suite`), evaluated on every row as one numpy
pass (`gate`, after `coerce` parses raw values) and cross-checked by Great Expectations (`gx`); `ids`
keeps the id set that makes duplicates quarantine. Bad rows go to quarantine, a bad batch is rejected."""

from loopline._exports import lazy_exports

_EXPORTS = {
    "Gate": "gate",
    "BatchVerdict": "gate",
    "compile_checks": "suite",
    "build_suite": "suite",
    "coerce_chunk": "coerce",
    "coerce_column": "coerce",
    "GxValidator": "gx",
    "EngineMismatchError": "gx",
    "ValueSet": "ids",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
