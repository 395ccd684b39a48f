"""Files edgewise reads and writes: scores (its own format and MIB's JSON), JSON state
and checkpoints, all written atomically (``files``); results folders that never
overwrite what a user has (``results_folder``)."""

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

__all__ = [
    "FORMAT_VERSION",
    "TEMP_SUFFIX",
    "ChecksumError",
    "DiskFullError",
    "FileFormatError",
    "atomic_write",
    "is_edgewise_temporary",
    "load_checkpoint",
    "load_mib_json",
    "load_prune_scores",
    "mib_edge_name",
    "read_json",
    "save_mib_json",
    "save_prune_scores",
    "write_json",
]
