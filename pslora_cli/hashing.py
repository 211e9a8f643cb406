"""The content hash of a JSON-able value (sorted keys, compact): what stores, caches and matrices key on. A leaf:
it imports nothing of pslora's, so the store can use it without depending on the config."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def canonical_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
