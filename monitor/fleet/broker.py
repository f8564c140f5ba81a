"""Kafka settings shared by `airtrace ingest` and `airtrace worker`: where the brokers are, how to
authenticate (SASL and/or TLS), and the topics with their partition counts."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from faust.auth import SASLCredentials, SSLCredentials
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth
from faust.types.auth import CredentialsT, SASLMechanism

log = logging.getLogger(__name__)

SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
# How long ingest and worker wait at start-up for Kafka to answer before they stop with one clear line
# (a broker that accepts connections but never answers would otherwise hold them for 40 s, or forever).
STARTUP_TIMEOUT_SECONDS = 15.0
T = TypeVar("T")


class BrokerError(RuntimeError):
    """Kafka cannot be reached or refuses a request; the message says what to check."""


@dataclass(frozen=True)
class KafkaSettings:
    """Brokers as host:port[,host:port]; SASL when a mechanism is set; TLS when `tls` or any TLS file is set."""

    bootstrap: str = "127.0.0.1:9092"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = None
    tls: bool = False
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    startup_timeout: float = STARTUP_TIMEOUT_SECONDS

    def __post_init__(self) -> None:
        for address in self.bootstrap.split(","):
            host, _, port = address.strip().rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"Kafka broker {address.strip()!r} is not host:port with a port from 1 to 65535; give --broker host:port[,host:port...]")
        if not self.startup_timeout > 0:
            raise ValueError(f"the Kafka start-up timeout must be a positive number of seconds, not {self.startup_timeout}")
        if self.sasl_mechanism and self.sasl_mechanism not in SASL_MECHANISMS:
            raise ValueError(f"SASL mechanism {self.sasl_mechanism!r} is not one of {', '.join(SASL_MECHANISMS)}")
        if self.sasl_mechanism and not (self.sasl_username and self.sasl_password):
            raise ValueError(f"SASL {self.sasl_mechanism} needs both a username and a password")
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError("a TLS client certificate needs both its certificate file and its key file")
        self.ssl_context()  # unreadable TLS files fail here, before anything connects

    def __repr__(self) -> str:
        return f"KafkaSettings(bootstrap={self.bootstrap!r}, sasl_mechanism={self.sasl_mechanism!r}, sasl_username={self.sasl_username!r}, tls={self.uses_tls})"

    @property
    def uses_tls(self) -> bool:
        return self.tls or any((self.tls_ca_file, self.tls_cert_file, self.tls_key_file))

    @property
    def faust_broker(self) -> str:
        return ";".join(f"kafka://{host.strip()}" for host in self.bootstrap.split(",") if host.strip())

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.uses_tls:
            return None
        try:
            context = ssl.create_default_context(cafile=self.tls_ca_file)
        except (ssl.SSLError, OSError) as exc:
            raise ValueError(f"TLS CA file {self.tls_ca_file} cannot be loaded ({exc}); give the CA bundle as a PEM file") from None
        try:
            if self.tls_cert_file:
                context.load_cert_chain(self.tls_cert_file, self.tls_key_file)
        except (ssl.SSLError, OSError) as exc:
            raise ValueError(f"TLS client certificate {self.tls_cert_file} with key {self.tls_key_file} cannot be loaded ({exc}); "
                             "give both as PEM files, the key matching the certificate") from None
        return context

    def credentials(self) -> CredentialsT | None:
        """Faust's description of the authentication, which also yields aiokafka's arguments."""
        context = self.ssl_context()
        if self.sasl_mechanism:
            return SASLCredentials(
                username=self.sasl_username, password=self.sasl_password, ssl_context=context, mechanism=SASLMechanism(self.sasl_mechanism)
            )
        return SSLCredentials(context) if context else None

    def client_kwargs(self) -> dict[str, Any]:
        """Arguments for aiokafka's producer, consumer and admin client."""
        return {"bootstrap_servers": self.bootstrap, **credentials_to_aiokafka_auth(self.credentials())}

    def unreachable(self, exc: Exception) -> BrokerError:
        return BrokerError(f"cannot reach Kafka at {self.bootstrap}: {exc}; check --broker and the SASL and TLS settings")

    async def starting(self, step: Awaitable[T]) -> T:
        """A start-up step of a Kafka client, bounded by `startup_timeout`; any failure is one BrokerError."""
        try:
            return await asyncio.wait_for(step, self.startup_timeout)
        except asyncio.TimeoutError:
            raise BrokerError(f"Kafka at {self.bootstrap} did not answer within {self.startup_timeout:g} s; check that --broker names a "
                              "running Kafka broker and the SASL and TLS settings (--startup-timeout waits longer)") from None
        except KafkaError as exc:
            raise self.unreachable(exc) from exc


@dataclass(frozen=True)
class Topics:
    """Topic names and sizes. Partitions bound how many workers share the work: one stream stays on one."""

    windows: str = "airtrace.windows"
    hits: str = "airtrace.hits"
    plays: str = "airtrace.plays"
    dead_letters: str = "airtrace.dead-letters"
    partitions: int = 12
    replication: int = 1

    def __post_init__(self) -> None:
        if self.partitions < 1 or self.replication < 1:
            raise ValueError("topic partitions and replication factor must be at least 1")

    @classmethod
    def with_prefix(cls, prefix: str, partitions: int = 12, replication: int = 1) -> "Topics":
        """Topics named `{prefix}.windows` and so on, for deployments that share a Kafka cluster."""
        return cls(f"{prefix}.windows", f"{prefix}.hits", f"{prefix}.plays", f"{prefix}.dead-letters", partitions, replication)


async def ensure_topics(settings: KafkaSettings, names: list[str], topics: Topics) -> dict[str, int]:
    """Create the topics that do not exist yet, with their partition counts (auto-created ones would get
    the broker's default); existing topics are left as they are. Returns each topic's partition count."""
    admin = AIOKafkaAdminClient(**settings.client_kwargs())
    try:
        await settings.starting(admin.start())
        response = await settings.starting(admin.create_topics([NewTopic(name, topics.partitions, topics.replication) for name in names]))
        described = await settings.starting(admin.describe_topics(names))
    finally:
        await admin.close()
    for name, code, message in response.topic_errors:
        if code == TopicAlreadyExistsError.errno:
            continue
        if code:
            raise BrokerError(f"cannot create Kafka topic {name}: {message or code}; check the broker's permissions and --replication")
        log.info("created Kafka topic %s with %d partitions", name, topics.partitions)
    return {topic["topic"]: len(topic["partitions"]) for topic in described}
