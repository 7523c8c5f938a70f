"""Personal identifiers (social handles, emails) become keyed pseudonyms before anything lands.

HMAC-SHA256 with a secret key: stable (the same person joins across topics and days), not reversible without
the key, and not a plain hash that a dictionary of known handles could undo.
"""
from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

KEY_ENV = "JOURNEYS_PSEUDONYM_KEY"
KEY_FILE_ENV = "JOURNEYS_PSEUDONYM_KEY_FILE"


def pseudonymise(identifier: str, key: bytes) -> str:
    normalised = identifier.strip().lower().encode()
    return "ps_" + hmac.new(key, normalised, hashlib.sha256).hexdigest()[:32]


def load_key(environ=None) -> bytes | None:
    """The key from JOURNEYS_PSEUDONYM_KEY_FILE or JOURNEYS_PSEUDONYM_KEY; None when neither is set."""
    environ = os.environ if environ is None else environ
    if environ.get(KEY_FILE_ENV):
        return Path(environ[KEY_FILE_ENV]).read_bytes().strip()
    if environ.get(KEY_ENV):
        return environ[KEY_ENV].encode()
    return None
