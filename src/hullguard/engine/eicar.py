"""The EICAR test file, recognised by its definition rather than by a hash.

The definition (eicar.org): the 68-byte string at offset 0, optionally followed by
whitespace only (space, tab, CR, LF, Ctrl-Z), and the whole file at most 128 bytes.
Hashing would miss the allowed whitespace variants; a YARA rule would cost a scan
pass, while this check is two comparisons for any file larger than 128 bytes.

The string is kept as hex so neither this source nor its byte-code contains it verbatim
(other scanners would flag our package otherwise).
"""

from __future__ import annotations

from hullguard.engine.verdict import Detection

_EICAR_HEX = (
    "58354f2150254041505b345c505a58353428505e2937434329377d24"
    "45494341522d5354414e444152442d414e544956495255532d544553542d46494c452124482b482a"
)
EICAR: bytes = bytes.fromhex(_EICAR_HEX)
"""The 68-byte EICAR string (built at import time, never stored verbatim)."""

MAX_EICAR_SIZE = 128
_TRAILING_WHITESPACE = b" \t\r\n\x1a"

EICAR_DETECTION = Detection(
    name="Eicar",
    type="Test file",
    suspicion="inf",
    tags="@NAME=Eicar@TYPE=Teststring@SUSP=inf",
    signature="builtin:eicar",
)


def is_eicar(data: bytes) -> bool:
    """True when ``data`` is an EICAR test file by the definition."""
    if len(data) > MAX_EICAR_SIZE or not data.startswith(EICAR):
        return False
    return not data[len(EICAR) :].strip(_TRAILING_WHITESPACE)
