"""Contract tests for the pub/sub layer: one suite over the in-process and the Redis implementation,
plus Redis-only outage, recovery and throughput checks.

Absence ("X was not delivered") is never checked by waiting: a later message that must arrive
after X (same sender, or causally after) is awaited instead, then X's absence is asserted.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlparse

import pytest
import redis.asyncio
from redis.exceptions import RedisError

from canvashub.server.pubsub import MemoryBroker, MemoryPubSub, PubSub, RedisPubSub, make_pubsub

from .proxy import TcpProxy
from .support import skip_or_fail, wait_until

REDIS_URL = os.environ.get("CANVASHUB_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
WAIT = 5.0  # upper bound for any delivery on loopback


class Inbox:
    """A handler that records (sender, payload) pairs."""

    def __init__(self, fail_first: int = 0) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self._fail_first = fail_first

    def __call__(self, sender: str, payload: bytes) -> None:
        self.messages.append((sender, payload))
        if len(self.messages) <= self._fail_first:
            raise RuntimeError("handler failure (on purpose)")

    @property
    def payloads(self) -> list[bytes]:
        return [payload for _, payload in self.messages]

    async def wait_for(self, payload: bytes, timeout: float = WAIT) -> None:
        await wait_until(lambda: payload in self.payloads, timeout, f"delivery of {payload[:40]!r}")

    async def wait_count(self, n: int, timeout: float = WAIT) -> None:
        await wait_until(lambda: len(self.messages) >= n, timeout, f"{n} messages (have {len(self.messages)})")


@dataclasses.dataclass
class Cluster:
    """Nodes on one broker: a shared MemoryBroker, or one Redis URL with a prefix unique to the test."""

    kind: str
    new: Callable[..., PubSub]  # an unstarted node on this broker
    made: list[PubSub] = dataclasses.field(default_factory=list)

    def make(self, **kw: Any) -> Any:
        node = self.new(**kw)
        self.made.append(node)
        return node

    async def node(self, **kw: Any) -> Any:
        node = self.make(**kw)
        await asyncio.wait_for(node.start(), WAIT)
        return node

    async def nodes(self, n: int, **kw: Any) -> list[Any]:
        return [await self.node(**kw) for _ in range(n)]

    async def close(self) -> None:
        for node in self.made:
            await asyncio.wait_for(node.close(), WAIT)


async def require_redis() -> None:
    client = redis.asyncio.Redis.from_url(REDIS_URL, socket_connect_timeout=1, socket_timeout=1)
    try:
        await client.ping()
    except (OSError, RedisError) as exc:
        skip_or_fail(f"Redis unreachable at {REDIS_URL}: {exc!r}")
    finally:
        await client.aclose()


def redis_cluster(prefix: str | None = None) -> Cluster:
    prefix = prefix or f"test-{uuid.uuid4().hex[:12]}:"

    def new(url: str = REDIS_URL, **kw: Any) -> RedisPubSub:
        return RedisPubSub(url, prefix=prefix, **kw)

    return Cluster("redis", new)


def memory_cluster() -> Cluster:
    broker = MemoryBroker()
    return Cluster("memory", lambda **kw: MemoryPubSub(broker, **kw))


@pytest.fixture(params=["memory", "redis"])
async def cluster(request) -> AsyncIterator[Cluster]:
    """Each contract test runs once on an in-process broker and once on Redis."""
    if request.param == "redis":
        await require_redis()
        made = redis_cluster()
    else:
        made = memory_cluster()
    yield made
    await made.close()


@pytest.fixture
async def redis_nodes() -> AsyncIterator[Cluster]:
    """Redis nodes sharing a prefix unique to the test (for Redis-only tests)."""
    await require_redis()
    made = redis_cluster()
    yield made
    await made.close()


@pytest.fixture
async def redis_proxy() -> AsyncIterator[TcpProxy]:
    """A proxy in front of the test Redis that can cut, restore and stall the link."""
    await require_redis()
    target = urlparse(REDIS_URL)
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 6379)
    await proxy.start()
    yield proxy
    await proxy.close()


def proxied_url(proxy: TcpProxy) -> str:
    return f"redis://127.0.0.1:{proxy.port}{urlparse(REDIS_URL).path or '/0'}"


# -- the contract, on every implementation -------------------------------------------------------


async def test_publish_reaches_other_nodes_but_not_the_sender(cluster: Cluster) -> None:
    """A publishes: B and C receive it with A's node id; A never gets its own message back."""
    a, b, c = await cluster.nodes(3)
    inboxes = {node.node_id: Inbox() for node in (a, b, c)}
    for node in (a, b, c):
        await node.subscribe("room", inboxes[node.node_id])
    assert len({a.node_id, b.node_id, c.node_id}) == 3

    assert a.publish("room", b"hello") is True
    await inboxes[b.node_id].wait_for(b"hello")
    await inboxes[c.node_id].wait_for(b"hello")
    assert inboxes[b.node_id].messages == [(a.node_id, b"hello")]
    assert inboxes[c.node_id].messages == [(a.node_id, b"hello")]

    # B received A's message, so B's reply reaches A after A's own message would have.
    assert b.publish("room", b"reply") is True
    await inboxes[a.node_id].wait_for(b"reply")
    assert inboxes[a.node_id].messages == [(b.node_id, b"reply")]


async def test_order_is_kept_per_sender_for_1000_messages(cluster: Cluster) -> None:
    """Two senders interleave 1,000 messages each: the receiver sees each sender's in publish order."""
    a, b, c = await cluster.nodes(3)
    inbox = Inbox()
    await b.subscribe("room", inbox)
    for i in range(1000):
        assert a.publish("room", b"a%d" % i) is True
        assert c.publish("room", b"c%d" % i) is True
    await inbox.wait_count(2000)
    from_a = [payload for sender, payload in inbox.messages if sender == a.node_id]
    from_c = [payload for sender, payload in inbox.messages if sender == c.node_id]
    assert from_a == [b"a%d" % i for i in range(1000)]
    assert from_c == [b"c%d" % i for i in range(1000)]


async def test_message_published_right_after_subscribe_returns_is_delivered(cluster: Cluster) -> None:
    """subscribe() returns only once the subscription is active: no gap for a publish just after."""
    a, b = await cluster.nodes(2)
    inboxes = [Inbox() for _ in range(25)]
    for i, inbox in enumerate(inboxes):
        await b.subscribe(f"fresh-{i}", inbox)
        assert a.publish(f"fresh-{i}", b"first") is True
    for inbox in inboxes:
        await inbox.wait_for(b"first")
        assert inbox.messages == [(a.node_id, b"first")]


async def test_unsubscribe_stops_delivery(cluster: Cluster) -> None:
    """After unsubscribe() returns, nothing more arrives on that channel; other channels go on."""
    a, b = await cluster.nodes(2)
    left, stays = Inbox(), Inbox()
    await b.subscribe("left", left)
    await b.subscribe("stays", stays)
    assert b.status()["channels"] == 2
    a.publish("left", b"before")
    await left.wait_for(b"before")

    await b.unsubscribe("left")
    await b.unsubscribe("never-subscribed")  # a no-op
    assert b.status()["channels"] == 1
    a.publish("left", b"after")
    a.publish("stays", b"marker")  # same sender, later: arrives after "after" would have
    await stays.wait_for(b"marker")
    assert left.payloads == [b"before"]


async def test_channels_are_isolated(cluster: Cluster) -> None:
    """Each channel's messages go only to that channel's handler."""
    a, b, c = await cluster.nodes(3)
    b_one, b_two, c_two = Inbox(), Inbox(), Inbox()
    await b.subscribe("one", b_one)
    await b.subscribe("two", b_two)
    await c.subscribe("two", c_two)
    a.publish("one", b"1a")
    a.publish("two", b"2a")
    a.publish("three", b"3a")  # nobody listens
    a.publish("one", b"1b")
    a.publish("two", b"2b")
    await b_one.wait_for(b"1b")
    await b_two.wait_for(b"2b")
    await c_two.wait_for(b"2b")
    assert b_one.payloads == [b"1a", b"1b"]
    assert b_two.payloads == [b"2a", b"2b"]
    assert c_two.payloads == [b"2a", b"2b"]


async def test_large_and_empty_payloads_round_trip(cluster: Cluster) -> None:
    """A 1 MiB payload and an empty one arrive byte for byte."""
    a, b = await cluster.nodes(2)
    inbox = Inbox()
    await b.subscribe("room", inbox)
    big = os.urandom(1 << 20)
    assert a.publish("room", big) is True
    assert a.publish("room", b"") is True
    await inbox.wait_count(2)
    assert inbox.messages == [(a.node_id, big), (a.node_id, b"")]


async def test_a_failing_handler_does_not_stop_delivery(cluster: Cluster) -> None:
    """A handler that raises is logged; the next messages are still delivered."""
    a, b = await cluster.nodes(2)
    inbox = Inbox(fail_first=1)
    await b.subscribe("room", inbox)
    a.publish("room", b"boom")
    a.publish("room", b"fine")
    await inbox.wait_for(b"fine")
    assert inbox.payloads == [b"boom", b"fine"]


async def test_publish_returns_bool_and_never_raises(cluster: Cluster) -> None:
    """publish() is False (and counted) before start and after close, True while healthy."""
    node = cluster.make()
    assert node.publish("room", b"too early") is False
    assert node.status()["dropped"] == 1
    await node.start()
    assert node.healthy is True
    assert node.publish("room", b"ok") is True
    await node.close()
    assert node.healthy is False
    assert node.publish("room", b"too late") is False
    assert node.status()["dropped"] >= 2
    await node.close()  # idempotent


async def test_status_shape(cluster: Cluster) -> None:
    """status() has the fields /readyz reports, with the right types."""
    node = await cluster.node()
    await node.subscribe("room", Inbox())
    status = node.status()
    assert set(status) == {"backend", "healthy", "node_id", "channels", "queued", "dropped", "reconnects", "last_error"}
    assert status["backend"] == cluster.kind
    assert status["healthy"] is True
    assert status["node_id"] == node.node_id and len(node.node_id) == 16
    assert status["channels"] == 1
    for field in ("queued", "dropped", "reconnects"):
        assert isinstance(status[field], int) and status[field] >= 0
    assert status["last_error"] is None


def test_make_pubsub_picks_the_backend() -> None:
    """make_pubsub: Redis for a URL, in-process otherwise; Redis options are ignored without Redis."""
    assert isinstance(make_pubsub(None), MemoryPubSub)
    assert isinstance(make_pubsub("", prefix="x:", max_queue=5), MemoryPubSub)
    node = make_pubsub(REDIS_URL, prefix="x:", node_id="0123456789abcdef", max_queue=5)
    assert isinstance(node, RedisPubSub) and node.node_id == "0123456789abcdef"
    with pytest.raises(TypeError):
        make_pubsub(None, prefx="typo:")
    with pytest.raises(ValueError):
        MemoryPubSub(node_id="short")


# -- Redis only ---------------------------------------------------------------------------------


async def test_redis_outage_is_detected_and_recovered(redis_nodes: Cluster, redis_proxy: TcpProxy) -> None:
    """Cut the link: healthy flips to False, publish refuses; restore: on_reconnect fires after the
    old channels are subscribed again, and delivery resumes both ways without re-subscribing."""
    loop = asyncio.get_running_loop()
    a = await redis_nodes.node(url=proxied_url(redis_proxy), retry_max_delay=0.2)
    b = await redis_nodes.node()
    a_room, b_room, a_late = Inbox(), Inbox(), Inbox()
    await a.subscribe("room", a_room)
    await b.subscribe("room", b_room)
    callback_saw: list[bool] = []
    reconnected = asyncio.Event()

    def on_reconnect() -> None:
        callback_saw.append(a.healthy)
        b.publish("room", b"from-callback")  # must reach A: "room" is subscribed again by now
        reconnected.set()

    a.on_reconnect(on_reconnect)
    b.publish("room", b"before")
    await a_room.wait_for(b"before")

    redis_proxy.cut()
    cut_at = loop.time()
    await wait_until(lambda: not a.healthy, 2.0, "A to notice the outage")
    print(f"\noutage (connection reset) noticed in {1000 * (loop.time() - cut_at):.1f} ms")
    assert a.publish("room", b"lost") is False
    status = a.status()
    assert status["healthy"] is False and status["dropped"] >= 1 and status["last_error"]
    await asyncio.wait_for(a.subscribe("late", a_late), 1.0)  # registered, made on reconnect
    assert callback_saw == []

    redis_proxy.restore()
    await asyncio.wait_for(reconnected.wait(), WAIT)
    assert callback_saw == [True]
    assert a.healthy and a.status()["reconnects"] == 1
    await a_room.wait_for(b"from-callback")
    b.publish("late", b"late")
    await a_late.wait_for(b"late")
    assert a.publish("room", b"after") is True
    await b_room.wait_for(b"after")
    assert b"lost" not in b_room.payloads


async def test_redis_start_while_unreachable_connects_later(redis_nodes: Cluster, redis_proxy: TcpProxy) -> None:
    """start() with Redis unreachable returns without raising; the node connects once Redis is back
    (a first connection, so on_reconnect is not called)."""
    redis_proxy.cut()
    a = redis_nodes.make(url=proxied_url(redis_proxy), retry_max_delay=0.2)
    calls: list[int] = []
    a.on_reconnect(lambda: calls.append(1))
    await asyncio.wait_for(a.start(), WAIT)
    assert a.healthy is False and a.status()["last_error"]
    inbox = Inbox()
    await asyncio.wait_for(a.subscribe("room", inbox), 1.0)
    assert a.publish("room", b"nowhere") is False

    redis_proxy.restore()
    await wait_until(lambda: a.healthy, WAIT, "A to connect")
    assert calls == [] and a.status()["reconnects"] == 0
    b = await redis_nodes.node()
    b.publish("room", b"hello")
    await inbox.wait_for(b"hello")


async def test_redis_silent_dead_link_is_detected_by_pings(redis_nodes: Cluster, redis_proxy: TcpProxy) -> None:
    """A link that goes silent (no reset) is noticed by the idle PINGs, then recovered."""
    loop = asyncio.get_running_loop()
    a = await redis_nodes.node(
        url=proxied_url(redis_proxy), ping_interval=0.2, ping_timeout=0.3, connect_timeout=0.5, retry_max_delay=0.2
    )
    reconnected = asyncio.Event()
    a.on_reconnect(reconnected.set)
    inbox = Inbox()
    await a.subscribe("room", inbox)

    redis_proxy.stalled = True
    stalled_at = loop.time()
    await wait_until(lambda: not a.healthy, 3.0, "A to notice the silent link")
    print(
        f"\nsilent link noticed in {1000 * (loop.time() - stalled_at):.0f} ms (ping_interval=0.2 s, ping_timeout=0.3 s)"
    )
    redis_proxy.stalled = False
    await asyncio.wait_for(reconnected.wait(), WAIT)
    b = await redis_nodes.node()
    b.publish("room", b"back")
    await inbox.wait_for(b"back")


async def test_redis_subscribe_waits_for_the_broker_on_a_slow_link(redis_nodes: Cluster, redis_proxy: TcpProxy) -> None:
    """On a slow link subscribe() still returns only once Redis confirmed, so a message another
    node publishes (over a fast link) right after it returns is not missed."""
    redis_proxy.latency = 0.05
    slow = await redis_nodes.node(url=proxied_url(redis_proxy))
    fast = await redis_nodes.node()
    for i in range(3):
        inbox = Inbox()
        started = time.perf_counter()
        await slow.subscribe(f"room-{i}", inbox)
        assert time.perf_counter() - started >= 0.09  # a round trip through the 50 ms proxy, both ways
        fast.publish(f"room-{i}", b"right after")
        await inbox.wait_for(b"right after")


async def test_redis_full_queue_refuses_instead_of_blocking(redis_nodes: Cluster) -> None:
    """Past max_queue, publish returns False and counts a drop; what was queued is still sent in order."""
    a = await redis_nodes.node(max_queue=10)
    b = await redis_nodes.node()
    inbox = Inbox()
    await b.subscribe("room", inbox)
    results = [a.publish("room", b"%d" % i) for i in range(15)]  # no await: the queue cannot drain
    assert results == [True] * 10 + [False] * 5
    assert a.status()["queued"] == 10 and a.status()["dropped"] == 5
    await inbox.wait_count(10)
    assert inbox.payloads == [b"%d" % i for i in range(10)]
    await wait_until(lambda: a.status()["queued"] == 0, WAIT, "the queue to drain")


async def test_redis_prefixes_isolate_deployments() -> None:
    """Two prefixes on one Redis never see each other's channels."""
    await require_redis()
    first, second = redis_cluster(), redis_cluster()
    try:
        a1, b1 = await first.nodes(2)
        a2, b2 = await second.nodes(2)
        in_b1, in_b2 = Inbox(), Inbox()
        await b1.subscribe("room", in_b1)
        await b2.subscribe("room", in_b2)
        a1.publish("room", b"first")
        await in_b1.wait_for(b"first")
        a2.publish("room", b"second")  # published after "first" reached Redis subscribers
        await in_b2.wait_for(b"second")
        assert in_b2.payloads == [b"second"]
        assert in_b1.payloads == [b"first"]
    finally:
        await first.close()
        await second.close()
