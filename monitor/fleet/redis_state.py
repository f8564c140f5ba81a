"""Play state in Redis, shared by a fleet of workers: a StateStore that waits out a Redis outage rather than lose a play."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from monitor.constants import Backoff
from monitor.options import DEFAULT_REDIS_PREFIX, DEFAULT_REDIS_URL
from monitor.stages.play_state import StreamState
from monitor.stages.state import Claims

log = logging.getLogger(__name__)
T = TypeVar("T")

# Redis keys, all under one prefix per deployment (give deployments that share a Redis their own prefix):
#   {prefix}state:{stream_id}      string  the stream's play state (JSON); never expires: a stream resumes after any pause
#   {prefix}state-seq:{stream_id}  string  that state's position (its last_seq unless it followed another ingest run
#                                          since), so that a save can be refused without parsing the state
#   {prefix}emitted:{event_key}    string  "1" once that event is on the plays topic. Before: "{token} {ms}", the claim
#                                          of the worker publishing it, made at {ms} (Redis's clock, Unix ms); the
#                                          claim lapses after CLAIM_SECONDS. Both expire after EMITTED_TTL_SECONDS.
STATE_KEY = "{prefix}state:{stream_id}"
SEQ_KEY = "{prefix}state-seq:{stream_id}"
# KEYS: state key, seq key per stream; ARGV: state, position per stream. Atomic: two workers saving one stream
# at once (one of them about to learn it lost the stream in a rebalance) cannot interleave.
SAVE_UNLESS_NEWER = """
local refused = 0
for i = 1, #KEYS, 2 do
  local saved = tonumber(redis.call('GET', KEYS[i + 1]))
  if saved == nil or saved <= tonumber(ARGV[i + 1]) then
    redis.call('SET', KEYS[i], ARGV[i])
    redis.call('SET', KEYS[i + 1], ARGV[i + 1])
  else
    refused = refused + 1
  end
end
return refused
"""
EMITTED_KEY = "{prefix}emitted:{event_key}"
PUBLISHED = "1"
# KEYS: emitted keys; ARGV: this store's claim token, the claim's lifetime in ms, PUBLISHED, the keys' TTL in ms.
# Returns the 1-based positions of the keys now claimed by this store, of those another store holds, and of
# those whose claim by another store lapsed (now this store's too), with the lapsed claims' times, in four lists.
# A claim's time is kept in it rather than in an expiry: the store that takes a lapsed claim over must know
# that the events may already be on the plays topic, and since when.
CLAIM = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local claim = ARGV[1] .. ' ' .. now_ms
local mine, held, lapsed, lapsed_at = {}, {}, {}, {}
for i, key in ipairs(KEYS) do
  local value = redis.call('GET', key)
  if value ~= ARGV[3] then
    local owner, at = nil, nil
    if value then owner, at = string.match(value, '^(%S+) (%d+)$') end
    if value and owner ~= ARGV[1] and (not at or now_ms - tonumber(at) < tonumber(ARGV[2])) then
      held[#held + 1] = i
    else
      if owner and owner ~= ARGV[1] then
        lapsed[#lapsed + 1] = i
        lapsed_at[#lapsed_at + 1] = at
      end
      redis.call('SET', key, claim, 'PX', ARGV[4])
      mine[#mine + 1] = i
    end
  end
end
return {mine, held, lapsed, lapsed_at}
"""
# KEYS: emitted keys; ARGV: this store's claim token, the keys' TTL in ms. Returns the 1-based positions of the keys
# this store still claims, each claim made afresh (now, Redis's clock). A key published, or claimed by another store
# (which took this store's claim over after it lapsed), is left alone; a key that is gone (a Redis restart without
# persistence lost it) is claimed again, as CLAIM would.
RENEW = """
local now = redis.call('TIME')
local claim = ARGV[1] .. ' ' .. (tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000))
local kept = {}
for i, key in ipairs(KEYS) do
  local value = redis.call('GET', key)
  if not value or string.match(value, '^(%S+) ') == ARGV[1] then
    redis.call('SET', key, claim, 'PX', ARGV[2])
    kept[#kept + 1] = i
  end
end
return kept
"""
# KEYS: emitted keys; ARGV: this store's claim token. Only this store's own claims are given up.
RELEASE = """
for _, key in ipairs(KEYS) do
  local value = redis.call('GET', key)
  if value and string.match(value, '^(%S+) ') == ARGV[1] then
    redis.call('DEL', key)
  end
end
return 0
"""
# Longer than Kafka's default retention (7 days), the furthest back a replay can reach.
EMITTED_TTL_SECONDS = 8 * 24 * 3600
# How long a claim holds when its worker neither marks its events published nor releases them (killed while
# publishing): the next owner of the stream takes them over this much later, sending those it does not find
# on the plays topic (the dead worker may have sent them and died before marking them). Longer than a
# batch's publishing takes even on a starved worker, so that a slow worker's claim does not lapse while its
# events are on their way.
CLAIM_SECONDS = 30.0
# Waits between attempts while Redis is unreachable: doubling from the first to the cap, with jitter.
RETRY_FIRST_SECONDS = 0.1
RETRY_CAP_SECONDS = 5.0


@dataclass(frozen=True, repr=False)
class RedisSettings:
    """How to reach Redis: a redis:// or rediss:// (TLS) URL, AUTH credentials, TLS files and the key prefix."""

    url: str = DEFAULT_REDIS_URL
    username: str | None = None
    password: str | None = None
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    prefix: str = DEFAULT_REDIS_PREFIX

    def __repr__(self) -> str:
        return f"RedisSettings(url={self.redacted_url()!r}, username={self.username!r}, tls_ca_file={self.tls_ca_file!r}, prefix={self.prefix!r})"

    def redacted_url(self) -> str:
        """The URL without any password in it, for logs and messages."""
        parts = urlsplit(self.url)
        if parts.password is None:
            return self.url
        netloc = f"{parts.username or ''}:***@{parts.netloc.rpartition('@')[2]}"
        return urlunsplit(parts._replace(netloc=netloc))

    def client(self) -> redis.Redis:
        """A client (it connects on first use); bad settings raise ValueError naming the fix."""
        parts = urlsplit(self.url)
        scheme = parts.scheme
        if scheme not in ("redis", "rediss"):
            raise ValueError(f"Redis URL {self.redacted_url()!r} must start with redis:// or rediss:// (TLS)")
        database = parts.path.strip("/")
        if database and not database.isdigit():  # redis-py would silently use database 0
            raise ValueError(f"Redis URL {self.redacted_url()!r}: database {database!r} is not a number; end the URL with one, as in redis://host:6379/0")
        try:
            parts.port
        except ValueError:
            raise ValueError(f"Redis URL {self.redacted_url()!r}: the port is not a number from 0 to 65535, as in redis://host:6379/0") from None
        tls = {"ssl_ca_certs": self.tls_ca_file, "ssl_certfile": self.tls_cert_file, "ssl_keyfile": self.tls_key_file}
        tls = {name: value for name, value in tls.items() if value}
        if tls and scheme != "rediss":
            raise ValueError("Redis TLS files were given but the URL starts with redis://; use rediss:// to connect with TLS")
        credentials = {name: value for name, value in (("username", self.username), ("password", self.password)) if value}
        # Retries live in RedisStateStore, which waits out an outage with backoff; the client tries once.
        return redis.Redis.from_url(self.url, retry=Retry(NoBackoff(), 0), decode_responses=True, **credentials, **tls)


class RedisStateStore:
    """A StateStore in Redis, shared by all workers; waits out a Redis outage (backoff, forever) rather than lose a play."""

    def __init__(self, settings: RedisSettings, sleep: Callable[[float], None] = time.sleep, claim_seconds: float = CLAIM_SECONDS):
        self.settings = settings
        self._client = settings.client()
        self._save_unless_newer = self._client.register_script(SAVE_UNLESS_NEWER)
        self._claim = self._client.register_script(CLAIM)
        self._renew = self._client.register_script(RENEW)
        self._release = self._client.register_script(RELEASE)
        self._token = f"claim:{uuid.uuid4()}"  # never PUBLISHED
        self._claim_ms = int(claim_seconds * 1000)
        self._sleep = sleep
        self._known: dict[str, StreamState] = {}  # by stream: the state this store last saved or loaded

    def _state_key(self, stream_id: str) -> str:
        return STATE_KEY.format(prefix=self.settings.prefix, stream_id=stream_id)

    def _seq_key(self, stream_id: str) -> str:
        return SEQ_KEY.format(prefix=self.settings.prefix, stream_id=stream_id)

    def _emitted_key(self, event_key: str) -> str:
        return EMITTED_KEY.format(prefix=self.settings.prefix, event_key=event_key)

    def _retrying(self, what: str, call: Callable[[], T]) -> T:
        """Run `call`, retrying with backoff while Redis is unreachable; wrong credentials fail at once."""
        backoff, failures = Backoff(RETRY_FIRST_SECONDS, RETRY_CAP_SECONDS), 0
        while True:
            try:
                result = call()
            except redis.AuthenticationError:
                raise
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                failures += 1
                wait = backoff.next_delay()
                if (line := backoff.failed(f"Redis at {self.settings.redacted_url()} unreachable to {what} ({exc})")) is not None:
                    log.warning("%s; retry %d in %.1f s", line, failures, wait)
                self._sleep(wait)
                continue
            if failures:
                log.info("Redis at %s reachable again after %d failed attempts", self.settings.redacted_url(), failures)
            return result

    def ping(self) -> None:
        """Fail fast (no retries) when Redis cannot be reached or refuses the credentials."""
        self._client.ping()

    def load(self, stream_ids: Iterable[str]) -> dict[str, StreamState]:
        """The saved states; one this store saved or loaded itself is reused while Redis holds the same
        `position` (the same hits give the same state): parsing states took an eighth of a worker's CPU."""
        ids = list(stream_ids)
        if not ids:
            return {}
        seqs = self._retrying("load play state", lambda: self._client.mget([self._seq_key(s) for s in ids]))
        states = {s: known for s, seq in zip(ids, seqs) if seq is not None and (known := self._known.get(s)) and known.position == int(seq)}
        unknown = [s for s in ids if s not in states]
        if unknown:
            values = self._retrying("load play state", lambda: self._client.mget([self._state_key(s) for s in unknown]))
            read = {s: state for s, v in zip(unknown, values) if v is not None and (state := _readable(s, v)) is not None}
            self._known.update(read)
            states.update(read)
        return states

    def save(self, states: Mapping[str, StreamState]) -> None:
        if not states:
            return
        keys = [key for s in states for key in (self._state_key(s), self._seq_key(s))]
        values = [value for v in states.values() for value in (v.to_json(), str(v.position))]
        refused = self._retrying("save play state", lambda: self._save_unless_newer(keys=keys, args=values))
        self._known.update(states)  # one refused is older than Redis's: `load` will not reuse it
        if refused:
            log.info("kept the newer saved state of %d stream(s): another worker got further with them (a rebalance)", refused)

    def claim(self, event_keys: Iterable[str]) -> Claims:
        keys = list(event_keys)
        if not keys:
            return Claims()
        redis_keys = [self._emitted_key(k) for k in keys]
        args = [self._token, self._claim_ms, PUBLISHED, EMITTED_TTL_SECONDS * 1000]
        mine, held, lapsed, lapsed_at = self._retrying("claim events", lambda: self._claim(keys=redis_keys, args=args))
        return Claims(mine={keys[i - 1] for i in mine}, held={keys[i - 1] for i in held},
                      lapsed={keys[i - 1]: int(at) / 1000 for i, at in zip(lapsed, lapsed_at)})

    def renew(self, event_keys: Iterable[str]) -> set[str]:
        keys = list(event_keys)
        if not keys:
            return set()
        args = [self._token, EMITTED_TTL_SECONDS * 1000]
        kept = self._retrying("renew claims", lambda: self._renew(keys=[self._emitted_key(k) for k in keys], args=args))
        return {keys[i - 1] for i in kept}

    def release(self, event_keys: Iterable[str]) -> None:
        keys = [self._emitted_key(k) for k in event_keys]
        if keys:
            self._retrying("release claimed events", lambda: self._release(keys=keys, args=[self._token]))

    def mark_published(self, event_keys: Iterable[str]) -> None:
        keys = list(event_keys)
        if not keys:
            return

        def mark() -> None:
            pipe = self._client.pipeline(transaction=False)
            for key in keys:
                pipe.set(self._emitted_key(key), PUBLISHED, ex=EMITTED_TTL_SECONDS)
            pipe.execute()

        self._retrying("mark events published", mark)

    def close(self) -> None:
        self._client.close()


def _readable(stream_id: str, saved: str) -> StreamState | None:
    """A saved state, or None (the stream starts afresh) when another release or a fault left it unreadable."""
    try:
        return StreamState.from_json(saved)
    except (ValueError, KeyError, TypeError) as exc:
        log.error("play state of stream %s is unreadable (%s); starting it afresh", stream_id, exc)
        return None
