"""Known-answer test vectors, one JSON file each, with a "source" field naming their origin.

noise_ikpsk2.json  cacophony's Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s vector
wg_kdf.json        wireguard-go's HMAC-BLAKE2s KDF1/KDF2/KDF3 cases
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

_HERE = Path(__file__).parent


def load(name: str) -> dict[str, Any]:
    """The parsed contents of ``tests/vectors/<name>.json`` (".json" may be given or not)."""
    path = _HERE / (name if name.endswith(".json") else f"{name}.json")
    with path.open(encoding="utf-8") as f:
        data: dict[str, Any] = json.load(f)
    return data
