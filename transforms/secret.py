"""Secrets (passwords, webhook URLs): resolved where they are used, never carried in a job graph or shown in a repr.

A Secret names where its value lives: a file (or a Secret Manager version), an environment variable, or an env
file's key. The launching process may keep the value it read (`value`), but pickling keeps only where to find it,
so a Beam job graph never holds a secret: on a cluster, the workers need the same file mounted or the same variable
set. A secret given as a bare value (a test's) works in its own process only, and refuses to be pickled.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path


class SecretUnavailable(RuntimeError):
    pass


# A Google Secret Manager secret version: where a Dataflow job's secrets live (deploy/dataflow). A file's place may
# name one, read through Secret Manager wherever it is used: Dataflow's workers share no disk with the launcher.
SECRET_VERSION = re.compile(r"^projects/[^/]+/secrets/[^/]+/versions/[^/]+$")


def read_text(location: str | Path) -> str:
    """The text of a file, or of a Secret Manager secret version."""
    if SECRET_VERSION.match(str(location)):
        from google.cloud import secretmanager

        client = secretmanager.SecretManagerServiceClient()
        return client.access_secret_version(name=str(location)).payload.data.decode()
    return Path(location).read_text()


@dataclass(frozen=True)
class Secret:
    file: str | None = None  # a file holding the secret (surrounding whitespace stripped)
    env: str | None = None  # an environment variable holding it
    env_file: str | None = None  # an env file (KEY=VALUE lines) whose `env` key holds it
    value: str | None = field(default=None, repr=False, compare=False)  # as read at launch: this process only

    def reveal(self) -> str:
        if self.file:  # read each time: a rotated secret needs no new job
            return read_text(self.file).strip()
        if self.value is not None:
            return self.value
        found = os.environ.get(self.env) if self.env else None
        if not found and self.env_file and (SECRET_VERSION.match(self.env_file) or Path(self.env_file).exists()):
            found = dict(read_env_file(self.env_file)).get(self.env)
        if not found:
            where = f"{self.env} in this process's environment" + (f" or in {self.env_file}" if self.env_file else "")
            raise SecretUnavailable(f"the secret is not set here ({where}): set it where the job runs, or give it "
                                    f"as a file ({self.env}_FILE)")
        return found

    def __getstate__(self):
        if not (self.file or self.env):
            raise TypeError("a secret given as a bare value cannot travel to workers: give it as a file or an "
                            "environment variable")
        return {"file": self.file, "env": self.env, "env_file": self.env_file, "value": None}

    def __setstate__(self, state):
        for name, value in state.items():
            object.__setattr__(self, name, value)


def read_env_file(path: str | Path) -> list[tuple[str, str]]:
    pairs = []
    for line in read_text(path).splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            pairs.append((key.strip(), value.strip()))
    return pairs
