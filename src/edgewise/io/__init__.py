"""Files edgewise reads and writes: scores (its own format and MIB's JSON), JSON state
and checkpoints, all written atomically (``files``); results folders that never
overwrite what a user has (``results_folder``); what produced each saved result and the
refusal to use it with anything else (``provenance``); every JSON file read back checked
whole (``schema``)."""

from edgewise.io.files import (
    FORMAT_VERSION,
    TEMP_SUFFIX,
    ChecksumError,
    DiskFullError,
    FileFormatError,
    atomic_write,
    is_edgewise_temporary,
    load_checkpoint,
    load_mib_json,
    load_prune_scores,
    mib_edge_name,
    read_json,
    save_mib_json,
    save_prune_scores,
    write_json,
)
from edgewise.io.provenance import ProvenanceError, ProvenanceWarning, weights_sha256
from edgewise.io.schema import FieldError

__all__ = [
    "FORMAT_VERSION",
    "TEMP_SUFFIX",
    "ChecksumError",
    "DiskFullError",
    "FieldError",
    "FileFormatError",
    "atomic_write",
    "is_edgewise_temporary",
    "load_checkpoint",
    "load_mib_json",
    "load_prune_scores",
    "mib_edge_name",
    "ProvenanceError",
    "ProvenanceWarning",
    "read_json",
    "save_mib_json",
    "save_prune_scores",
    "weights_sha256",
    "write_json",
]
