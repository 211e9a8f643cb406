"""The on-disk adapter store (layout.py) and its atomic file writes (files.py, stream_write.py); `store verify` and
`store ls` are commands/store.py. No path inside a store is spelled anywhere else. Imports nothing above it."""

from .files import (atomic_folder, atomic_path, check_output_folder, read_json, sha256_file, write_json_atomic,
                    write_text_atomic)
from .layout import Store, TaskFiles

__all__ = ["Store", "TaskFiles", "atomic_folder", "atomic_path", "check_output_folder", "read_json", "sha256_file",
           "write_json_atomic", "write_text_atomic"]
