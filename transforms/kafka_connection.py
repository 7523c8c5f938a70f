"""How to reach a Kafka cluster: one frozen, typed settings object for producers, consumers and admin clients.

Settings come from the environment (JOURNEYS_KAFKA_*) or an env file; secrets may instead come from files
(JOURNEYS_KAFKA_SASL_PASSWORD_FILE, JOURNEYS_KAFKA_SSL_PASSWORD_FILE) so they never sit in a command line.
Secrets are excluded from repr() and from describe(), so logging a connection never leaks them. A secret is resolved
where it is used (transforms/secret.py): pickled into a Beam job graph, the connection keeps only the file or the
variable that holds it, so on a cluster, mount the file on the workers or set the variable there.
"""
from __future__ import annotations

import collections
import logging
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from transforms.secret import SECRET_VERSION, Secret, read_env_file

PREFIX = "JOURNEYS_KAFKA_"
DEFAULT_BOOTSTRAP = "127.0.0.1:19092"  # deploy/local/kafka.sh
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


@dataclass(frozen=True)
class KafkaConnection:
    bootstrap_servers: str = DEFAULT_BOOTSTRAP
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: Secret | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_password: Secret | None = None
    client_id: str = "customer-journeys"

    def __post_init__(self):
        if self.security_protocol not in SECURITY_PROTOCOLS:
            raise ValueError(f"security protocol {self.security_protocol!r}: one of {', '.join(SECURITY_PROTOCOLS)}")
        if self.security_protocol.startswith("SASL_"):
            if self.sasl_mechanism not in SASL_MECHANISMS:
                raise ValueError(f"{self.security_protocol} needs a SASL mechanism: one of {', '.join(SASL_MECHANISMS)}")
            if not self.sasl_username or self.sasl_password is None:
                raise ValueError(f"{self.security_protocol} needs {PREFIX}SASL_USERNAME and a password "
                                 f"({PREFIX}SASL_PASSWORD or {PREFIX}SASL_PASSWORD_FILE)")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, env_file: str | Path | None = None) -> "KafkaConnection":
        """Settings from JOURNEYS_KAFKA_* variables; an env file (KEY=VALUE lines) fills what they leave unset."""
        values = dict(read_env_file(env_file)) if env_file else {}
        environ_values = {k: v for k, v in (os.environ if environ is None else environ).items() if k.startswith(PREFIX)}
        values.update(environ_values)

        def get(name: str) -> str | None:
            return values.get(PREFIX + name) or None

        def secret(name: str) -> Secret | None:
            if get(name + "_FILE"):
                return Secret(file=_absolute(get(name + "_FILE")))
            if not get(name):
                return None
            from_file = env_file is not None and PREFIX + name not in environ_values
            return Secret(env=PREFIX + name, env_file=_absolute(env_file) if from_file else None, value=get(name))

        if not get("BOOTSTRAP") and get("PORT"):
            values[PREFIX + "BOOTSTRAP"] = f"127.0.0.1:{get('PORT')}"
        return cls(
            bootstrap_servers=get("BOOTSTRAP") or DEFAULT_BOOTSTRAP,
            security_protocol=(get("SECURITY_PROTOCOL") or "PLAINTEXT").upper(),
            sasl_mechanism=get("SASL_MECHANISM"),
            sasl_username=get("SASL_USERNAME"),
            sasl_password=secret("SASL_PASSWORD"),
            ssl_cafile=get("SSL_CAFILE"),
            ssl_certfile=get("SSL_CERTFILE"),
            ssl_keyfile=get("SSL_KEYFILE"),
            ssl_password=secret("SSL_PASSWORD"),
            client_id=get("CLIENT_ID") or "customer-journeys",
        )

    def client_config(self) -> dict:
        """Keyword arguments for kafka-python's KafkaProducer, KafkaConsumer and KafkaAdminClient."""
        config = {
            "bootstrap_servers": self.bootstrap_servers.split(","),
            "security_protocol": self.security_protocol,
            "client_id": self.client_id,
        }
        if self.security_protocol.startswith("SASL_"):
            config.update(sasl_mechanism=self.sasl_mechanism, sasl_plain_username=self.sasl_username,
                          sasl_plain_password=self.sasl_password.reveal())
        if self.security_protocol in ("SSL", "SASL_SSL"):
            config.update({k: v for k, v in {
                "ssl_cafile": self.ssl_cafile, "ssl_certfile": self.ssl_certfile,
                "ssl_keyfile": self.ssl_keyfile,
                "ssl_password": self.ssl_password.reveal() if self.ssl_password else None}.items() if v})
        return config

    def consumer(self, **settings):
        """A KafkaConsumer on this cluster; KafkaUnreachable, saying why, when no broker lets it in."""
        from kafka import KafkaConsumer

        with explained_failures(self, timeout_s=30):
            return KafkaConsumer(**self.client_config(), **settings)

    def producer(self, **settings):
        """A KafkaProducer on this cluster; KafkaUnreachable, saying why, when no broker lets it in."""
        from kafka import KafkaProducer

        with explained_failures(self, timeout_s=30):
            return KafkaProducer(**self.client_config(), **settings)

    def describe(self) -> str:
        """For logs: where and how, never the secrets."""
        auth = f" sasl={self.sasl_mechanism} user={self.sasl_username}" if self.sasl_mechanism else ""
        return f"{self.bootstrap_servers} ({self.security_protocol}{auth})"

    def why_unreachable(self, client_errors, timeout_s: float) -> str:
        """Why no broker let this client in, from kafka-python's error lines while it tried: a TLS handshake it
        refused, a connection the broker closed during SASL authentication, or no answer at all."""
        for line in client_errors:
            tls = re.search(r"Handshake failed: (.*?)(?: \(_ssl\.c:\d+\))?$", line)
            if tls:
                return (f"the TLS handshake with {self.bootstrap_servers} failed ({tls[1]}): the broker's "
                        f"certificate is not signed by the CA of {PREFIX}SSL_CAFILE "
                        f"({self.ssl_cafile or 'unset: the system CAs'}), or does not name that host")
        if self.security_protocol.startswith("SASL_") and any(
                re.search(r"broker_version=\(\d", line) and re.search(r"disconnected|Connection lost", line)
                or "Authentication" in line for line in client_errors):
            return (f"authentication failed at {self.bootstrap_servers}: the broker closed the connection during "
                    f"SASL {self.sasl_mechanism} authentication of user {self.sasl_username!r} (a wrong password "
                    f"or user name, or a mechanism that listener does not offer)")
        return f"no Kafka broker answered at {self.describe()} within {timeout_s:.0f}s"


class KafkaUnreachable(RuntimeError):
    """No broker let this client in; the message says why, as far as the client can tell."""

    @property
    def refused(self) -> bool:
        """A broker answered and refused this client's credentials or trust (not: no broker answered)."""
        return not str(self).startswith("no Kafka broker answered")


class _ErrorLines(logging.Handler):
    """The latest of kafka-python's error lines: a command that runs for days keeps only those."""

    def __init__(self, keep: int = 100):
        super().__init__(logging.ERROR)
        self.lines: collections.deque = collections.deque(maxlen=keep)

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@contextmanager
def explained_failures(connection: KafkaConnection, timeout_s: float):
    """Turns kafka-python's "Unable to bootstrap" (after it retried for timeout_s) into KafkaUnreachable saying
    why: its own error lines are kept meanwhile (they are on the `kafka` logger, whatever it prints)."""
    from kafka.errors import KafkaTimeoutError

    errors = _ErrorLines()
    logger = logging.getLogger("kafka")
    logger.addHandler(errors)
    try:
        yield
    except KafkaTimeoutError as error:
        if "bootstrap" not in str(error).lower():
            raise
        raise KafkaUnreachable(connection.why_unreachable(errors.lines, timeout_s)) from None
    finally:
        logger.removeHandler(errors)


def _absolute(location) -> str:
    """A file's path as workers elsewhere find it (absolute, its symbolic links kept: a worker mounts the same
    path, not what it leads to here); a Secret Manager version as it is."""
    return str(location) if SECRET_VERSION.match(str(location)) else os.path.abspath(location)
