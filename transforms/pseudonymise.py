"""Personal identifiers become keyed pseudonyms before anything lands.

HMAC-SHA256 with a secret key: stable (the same person joins across topics and days), not reversible without
the key, and not a plain hash that a dictionary of known ids could undo. The topic schemas mark the fields that
identify a person (`"pseudonymise": true`: customer ids, anonymous/cookie ids, social handles); the decoder replaces
them as it reads (transforms/decode_events.py), so the pipeline's state, its tables and its alerts only ever hold
pseudonyms. Dead letters keep the raw bytes of what could not be read, for replay, and so may hold raw ids.

The key comes from JOURNEYS_PSEUDONYM_KEY_FILE (a file) or JOURNEYS_PSEUDONYM_KEY, resolved where it is used
(transforms/secret.py): there is no default, so a pipeline without one refuses to start. The generator, whose people
are synthetic, derives one from its seed when none is set.
"""
from __future__ import annotations

import hashlib
import hmac
import os

import schemas
from transforms.secret import SECRET_VERSION, Secret

KEY_ENV = "JOURNEYS_PSEUDONYM_KEY"
KEY_FILE_ENV = "JOURNEYS_PSEUDONYM_KEY_FILE"
PREFIX = "ps_"


def pseudonymise(identifier: str, key: bytes) -> str:
    """A handle or an email (case and surrounding blanks do not make another person)."""
    return pseudonym(identifier.strip().lower(), key)


def pseudonym(identifier: str, key: bytes) -> str:
    """An id as it is (two ids that differ by case are two people)."""
    return PREFIX + hmac.new(key, identifier.encode(), hashlib.sha256).hexdigest()[:32]


def load_key(environ=None) -> bytes | None:
    """The key from JOURNEYS_PSEUDONYM_KEY_FILE or JOURNEYS_PSEUDONYM_KEY; None when neither is set."""
    secret = key_secret(environ)
    return secret.reveal().encode() if secret else None


def key_secret(environ=None) -> Secret | None:
    """Where the key is, as a Secret (never its value in a job graph); None when neither variable is set."""
    environ = os.environ if environ is None else environ
    if environ.get(KEY_FILE_ENV):
        location = environ[KEY_FILE_ENV]
        return Secret(file=location if SECRET_VERSION.match(location) else os.path.abspath(location))
    if environ.get(KEY_ENV):
        return Secret(env=KEY_ENV, value=environ[KEY_ENV])
    return None


def personal_fields(topic: str) -> tuple[str, ...]:
    """The fields of a topic's records that identify a person (the schema marks them)."""
    return tuple(f["name"] for f in schemas.latest(topic).definition["fields"] if f.get("pseudonymise"))


class Pseudonymiser:
    """Replaces the personal fields of decoded records by their pseudonyms. Picklable: it carries where the key is,
    and reads it on first use in the process that uses it."""
    CACHE = 200_000  # pseudonyms remembered per process: a customer's events come again and again

    def __init__(self, key: Secret):
        self.key = key
        self._fields = {topic: personal_fields(topic) for topic in schemas.TOPICS}
        self._secret: bytes | None = None
        self._known: dict[str, str] = {}

    def __getstate__(self):
        return {"key": self.key, "_fields": self._fields}

    def __setstate__(self, state):
        self.__dict__.update(state, _secret=None, _known={})

    def record(self, topic: str, record: dict) -> dict:
        fields = [f for f in self._fields.get(topic, ()) if record.get(f) is not None]
        if not fields:
            return record
        return {**record, **{f: self.of(record[f]) for f in fields}}

    def of(self, identifier: str) -> str:
        known = self._known.get(identifier)
        if known is None:
            if self._secret is None:
                self._secret = self.key.reveal().encode()
            if len(self._known) >= self.CACHE:
                self._known.clear()
            known = self._known[identifier] = pseudonym(identifier, self._secret)
        return known

    def __repr__(self):
        return f"Pseudonymiser({self.key!r})"
