"""State stores: one contract for memory and Redis; Redis keeps state across restarts and outages."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import replace

import pytest
import redis

from monitor.bench import servers
from monitor.stages.ingest_runs import Verdict, verdict
from monitor.stages.play_state import Following, StreamState
from monitor.records import Neighbour, WindowHits
from monitor.fleet.redis_state import RedisSettings, RedisStateStore
from monitor.stages.state import Claims, MemoryStateStore, StateStore


def state(stream_id: str, last_seq: int) -> StreamState:
    hits = WindowHits(stream_id, last_seq, last_seq * 0.5, 1.79e9 + last_seq * 0.5, (Neighbour("t1-ü", 3.5, 0.875),))
    return StreamState(stream_id, last_seq, history=(hits,))


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> StateStore:
    if request.param == "memory":
        return MemoryStateStore()
    server = request.getfixturevalue("redis_server")
    return RedisStateStore(RedisSettings(f"redis://127.0.0.1:{server.port}/0"))


def test_state_round_trip(store: StateStore) -> None:
    assert store.load(["a", "b"]) == {}
    store.save({"a": state("a", 41), "b": state("b", 1)})
    store.save({"b": state("b", 2)})
    assert store.load(["a", "b", "c"]) == {"a": state("a", 41), "b": state("b", 2)}
    assert store.load([]) == {}


def test_a_save_never_moves_a_stream_back(store: StateStore) -> None:
    """A worker that lost a stream in a rebalance while still working on it saves an older state after the
    new owner saved a newer one: the newer one stays, and the other streams of that save are saved."""
    store.save({"rebalanced": state("rebalanced", 110)})
    store.save({"rebalanced": state("rebalanced", 105), "other": state("other", 7)})
    assert store.load(["rebalanced", "other"]) == {"rebalanced": state("rebalanced", 110), "other": state("other", 7)}
    store.save({"rebalanced": state("rebalanced", 111)})
    assert store.load(["rebalanced"]) == {"rebalanced": state("rebalanced", 111)}


def test_workers_saving_one_stream_at_once_leave_the_newest_state(redis_server: servers.ServerProcess) -> None:
    """Concurrent saves from several clients (workers) are compared and written atomically."""
    import random

    seqs = list(range(400))
    random.Random(0).shuffle(seqs)
    stores = redis_stores(redis_server, 4)
    threads = [threading.Thread(target=lambda st=st, part=seqs[n::4]: [st.save({"raced": state("raced", q)}) for q in part])
               for n, st in enumerate(stores)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert stores[0].load(["raced"]) == {"raced": state("raced", max(seqs))}


def test_a_worker_reuses_the_state_it_saved_until_another_worker_saves_a_newer_one(redis_server: servers.ServerProcess) -> None:
    """A worker's own last state is taken as is while Redis holds its last_seq (no parsing); another
    worker's newer save, a state refused as older, and a Redis that lost its data are all read from Redis."""
    mine, other = redis_stores(redis_server, 2)
    saved = state("s", 3)
    mine.save({"s": saved})
    assert mine.load(["s"])["s"] is saved
    other.save({"s": state("s", 5)})
    mine.save({"s": state("s", 4)})  # refused: Redis holds 5
    assert mine.load(["s"]) == {"s": state("s", 5)}
    assert other.load(["s", "never"]) == {"s": state("s", 5)}
    redis.Redis(port=redis_server.port).flushall()
    assert mine.load(["s"]) == {}


def test_an_unreadable_saved_state_starts_its_stream_afresh(redis_server: servers.ServerProcess, caplog: pytest.LogCaptureFixture) -> None:
    store = RedisStateStore(RedisSettings(f"redis://127.0.0.1:{redis_server.port}/0"))
    store.save({"good": state("good", 3)})
    redis.Redis(port=redis_server.port).set("airtrace:state:bad", '{"v": 99}')
    assert store.load(["good", "bad"]) == {"good": state("good", 3)}
    assert "play state of stream bad is unreadable" in caplog.text


def test_memory_store_remembers_the_latest_published_events_only() -> None:
    store = MemoryStateStore(keep_published=2)
    store.mark_published(["e1", "e2"])
    store.mark_published(["e3"])
    assert store.claim(["e1", "e2", "e3"]) == Claims(mine={"e1"})


def test_published_events_are_remembered(store: StateStore) -> None:
    assert store.claim(["e1", "e2"]) == Claims(mine={"e1", "e2"})
    store.mark_published(["e1"])
    store.mark_published([])
    assert store.claim(["e1", "e2"]) == Claims(mine={"e2"})  # a store's own claim stays its own
    assert store.claim([]) == Claims()
    assert store.renew(["e1", "e2"]) == {"e2"} and store.renew([]) == set()


def redis_stores(server: servers.ServerProcess, count: int, claim_seconds: float = 30.0) -> list[RedisStateStore]:
    """Stores as `count` workers hold them: one Redis, a claim token each."""
    return [RedisStateStore(RedisSettings(f"redis://127.0.0.1:{server.port}/0"), claim_seconds=claim_seconds) for _ in range(count)]


def test_an_event_one_worker_claimed_is_not_another_workers_to_publish(redis_server: servers.ServerProcess) -> None:
    """Two workers derive the same events at once (one lost their stream in a rebalance mid-batch): the one
    that claimed first publishes; the other gets those it published as published, those it gave up as its own."""
    first, second = redis_stores(redis_server, 2)
    assert first.claim(["sent", "failed"]) == Claims(mine={"sent", "failed"})
    assert second.claim(["sent", "failed", "new"]) == Claims(mine={"new"}, held={"sent", "failed"})
    first.mark_published(["sent"])
    first.release(["failed", "new"])  # "new" is the second's: a release gives up only the store's own claims
    assert second.claim(["sent", "failed", "new"]) == Claims(mine={"failed", "new"})
    assert first.claim(["failed", "new"]) == Claims(held={"failed", "new"})


def test_the_claim_of_a_worker_that_died_publishing_lapses_and_says_since_when_its_events_may_be_out(redis_server: servers.ServerProcess) -> None:
    """The heir gets the events, told that the dead worker may have sent them, and since when (Redis's
    clock, here this machine's: bracketed by reading it before and after, to the millisecond kept)."""
    dead, heir = redis_stores(redis_server, 2, claim_seconds=0.5)
    before = time.time()
    assert dead.claim(["e", "f"]) == Claims(mine={"e", "f"})
    after = time.time()
    dead.mark_published(["f"])
    assert heir.claim(["e", "f"]) == Claims(held={"e"})
    claims = servers.wait_until(lambda: (c := heir.claim(["e", "f"])).mine and c, timeout=30.0, what="the dead worker's claim to lapse")
    assert claims.mine == {"e"} and not claims.held and set(claims.lapsed) == {"e"}
    assert before - 0.001 <= claims.lapsed["e"] <= after
    assert heir.claim(["e"]) == Claims(mine={"e"})  # its own claim now: no longer lapsed


def test_a_worker_renews_only_the_claims_no_other_worker_took_over(redis_server: servers.ServerProcess) -> None:
    """A worker held its claims longer than they hold (starved, paused, reading the plays topic back) and another
    took some over: just before sending it renews those still its own (dated now, Redis's clock, here this
    machine's), and a claim Redis lost (restarted without persistence) is its own again."""
    slow, heir = redis_stores(redis_server, 2, claim_seconds=0.5)
    assert slow.claim(["taken", "published", "kept"]).mine == {"taken", "published", "kept"}
    claims = servers.wait_until(lambda: (c := heir.claim(["taken", "published"])).mine and c, timeout=30.0, what="the claims to lapse")
    assert claims.mine == {"taken", "published"}
    heir.mark_published(["published"])
    before = time.time()
    assert slow.renew(["taken", "published", "kept", "lost"]) == {"kept", "lost"}
    after = time.time()
    client = redis.Redis(port=redis_server.port, decode_responses=True)
    for key in ("kept", "lost"):
        token, at = client.get(f"airtrace:emitted:{key}").split()
        assert token == slow._token and before - 0.001 <= int(at) / 1000 <= after
    assert slow.renew(["taken", "published"]) == set() and heir.renew(["taken", "published"]) == {"taken"}


def test_a_claim_written_before_claims_carried_their_time_is_held_until_it_expires(redis_server: servers.ServerProcess) -> None:
    """During an upgrade an older worker's claim ("claim:<uuid>", expiring after 30 s) holds as it did."""
    (store,) = redis_stores(redis_server, 1)
    client = redis.Redis(port=redis_server.port)
    client.set("airtrace:emitted:e", "claim:older-worker", px=300)
    assert store.claim(["e"]) == Claims(held={"e"})
    servers.wait_until(lambda: store.claim(["e"]) == Claims(mine={"e"}), timeout=30.0, what="the old claim to expire")


def test_workers_claiming_at_once_get_each_event_exactly_once(redis_server: servers.ServerProcess) -> None:
    keys = [f"e{n}" for n in range(300)]
    stores = redis_stores(redis_server, 4)
    won: list[set[str]] = [set() for _ in stores]

    def claim_all(store: RedisStateStore, mine: set[str], order: int) -> None:
        for start in range(0, len(keys), 7):
            part = keys[start : start + 7][:: 1 if order % 2 else -1]
            mine |= store.claim(part).mine

    threads = [threading.Thread(target=claim_all, args=(st, mine, n)) for n, (st, mine) in enumerate(zip(stores, won))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(len(mine) for mine in won) == len(keys) and set().union(*won) == set(keys)


def test_prefixes_keep_deployments_apart(redis_server: servers.ServerProcess) -> None:
    url = f"redis://127.0.0.1:{redis_server.port}/0"
    blue, green = RedisStateStore(RedisSettings(url, prefix="blue:")), RedisStateStore(RedisSettings(url, prefix="green:"))
    blue.save({"s": state("s", 1)})
    blue.mark_published(["e"])
    keys = redis.Redis(port=redis_server.port, decode_responses=True).keys("*")
    assert sorted(keys) == ["blue:emitted:e", "blue:state-seq:s", "blue:state:s"]
    assert green.load(["s"]) == {} and green.claim(["e"]) == Claims(mine={"e"})


def test_state_survives_a_redis_restart_and_waits_out_the_outage(redis_server: servers.ServerProcess) -> None:
    store = RedisStateStore(RedisSettings(f"redis://127.0.0.1:{redis_server.port}/0"))
    store.save({"s": state("s", 1)})
    redis_server.stop()
    saved = threading.Event()

    def save_during_outage() -> None:
        store.save({"t": state("t", 2)})
        saved.set()

    thread = threading.Thread(target=save_during_outage)
    thread.start()
    time.sleep(1.0)
    assert not saved.is_set(), "a save while Redis is down must wait, not fail or vanish"
    redis_server.start()
    thread.join(15)
    assert saved.is_set()
    assert store.load(["s", "t"]) == {"s": state("s", 1), "t": state("t", 2)}


def test_auth_and_bad_settings_fail_clearly(tmp_path) -> None:
    server = servers.redis_server(tmp_path, password="s3cret")
    try:
        url = f"redis://127.0.0.1:{server.port}/0"
        RedisStateStore(RedisSettings(url, password="s3cret")).ping()
        with pytest.raises(redis.AuthenticationError):
            RedisStateStore(RedisSettings(url, password="wrong")).load(["s"])
    finally:
        server.stop()
    with pytest.raises(ValueError, match="rediss://"):
        RedisSettings("redis://h:1/0", tls_ca_file="ca.pem").client()
    with pytest.raises(ValueError, match="must start with"):
        RedisSettings("http://h:1").client()


def test_secrets_never_print() -> None:
    settings = RedisSettings("redis://user:hunter2@cache.example:6380/1", password="hunter2")
    assert "hunter2" not in repr(settings)
    assert settings.redacted_url() == "redis://user:***@cache.example:6380/1"


def test_a_state_that_went_on_with_another_ingest_run_is_saved_over_the_one_before(store: StateStore) -> None:
    """Following another ingest run of a stream (its ingest started earlier) moves `last_seq` back; its `progress`
    still orders the saves, so the new state is saved and a worker that lost the stream cannot move it back."""
    before = state("moved", 110)
    moved = replace(state("moved", 50), following=Following(1_790_000_000_000, 1.79e9 + 25.0), progress=111)
    store.save({"moved": before})
    store.save({"moved": moved})
    assert store.load(["moved"]) == {"moved": moved}
    store.save({"moved": before})
    assert store.load(["moved"]) == {"moved": moved}


def test_a_state_saved_before_ingest_runs_were_followed_goes_by_seq_alone_until_its_next_window() -> None:
    """A state of release 6 knows no run nor its air time: a window behind its seq is a replay whatever its air time
    (it cannot tell a garbled numbering from a replay), and the next one past it is taken and followed."""
    saved = state("upgraded", 110)
    older = {k: v for k, v in json.loads(saved.to_json()).items() if k not in ("following", "progress")} | {"v": 6}
    loaded = StreamState.from_json(json.dumps(older))
    assert loaded == saved and loaded.position == 110
    behind = replace(saved.history[-1], seq=100, air_time=saved.history[-1].air_time + 3600.0, run=1_790_000_000_000)
    assert verdict(loaded, behind, 10.0) is Verdict.REPLAY
    assert verdict(loaded, replace(behind, seq=111), 10.0) is Verdict.TAKE
