"""The process metrics module: escaping, per-trunk gauges, sampled queue depth, ports."""

from __future__ import annotations

import socket

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from hub.observe import metrics

ODD = 'odd"trunk\\x\nnext'


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def test_label_values_are_escaped_and_parse_back() -> None:
    metrics.calls_active({ODD: 2, "plain": 1})
    text = metrics.exposition(metrics.VOICE)
    assert 'hub_voice_calls_active{trunk="odd\\"trunk\\\\x\\nnext"} 2.0' in text.splitlines()
    parsed = {s.labels["trunk"]: s.value for f in text_string_to_metric_families(text)
              for s in f.samples if s.name == "hub_voice_calls_active"}
    assert parsed[ODD] == 2 and parsed["plain"] == 1


def test_an_idle_trunk_reads_zero() -> None:
    metrics.calls_active({"busy": 3, "quiet": 1})
    metrics.calls_active({"busy": 1})
    assert value(metrics.VOICE, "hub_voice_calls_active", trunk="busy") == 1
    assert value(metrics.VOICE, "hub_voice_calls_active", trunk="quiet") == 0


def test_recorded_counts_attempts_and_moves() -> None:
    before = value(metrics.WORKER, "hub_attempts_total", transport="slack", outcome="delivered")
    metrics.recorded("slack", ["delivered", "delivered", "failed"], ["delivered", "failed"])
    assert value(metrics.WORKER, "hub_attempts_total", transport="slack",
                 outcome="delivered") == before + 2
    assert value(metrics.WORKER, "hub_delivery_results_total", transport="slack",
                 status="failed") >= 1


def test_ari_and_ami_state() -> None:
    metrics.ari_connected(True)
    metrics.ami_connected(True)
    assert value(metrics.VOICE, "hub_ari_connected") == 1 == value(metrics.VOICE, "hub_ami_connected")
    metrics.ari_connected(False)
    metrics.ami_connected(False)
    assert value(metrics.VOICE, "hub_ari_connected") == 0 == value(metrics.VOICE, "hub_ami_connected")


def test_queue_depth_is_sampled_and_survives_redis_errors() -> None:
    depths = {"email": 4}

    def depth(queue: str) -> int:
        if queue == "sms":
            raise ConnectionError("redis away")
        return depths.get(queue, 0)

    registry = CollectorRegistry()
    registry.register(metrics.QueueDepth(("email", "sms", "voice"), depth))
    assert value(registry, "hub_queue_depth", queue="email") == 4
    depths["email"] = 7  # read at scrape time, never cached
    assert value(registry, "hub_queue_depth", queue="email") == 7
    assert registry.get_sample_value("hub_queue_depth", {"queue": "sms"}) is None
    assert registry.get_sample_value("hub_queue_depth", {"queue": "voice"}) == 0


def test_serve_takes_the_next_free_port_and_zero_disables() -> None:
    assert metrics.serve(CollectorRegistry(), "127.0.0.1", 0, "test") is None
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        got = metrics.serve(CollectorRegistry(), "127.0.0.1", port, "test")
    assert got is not None and port < got < port + metrics.PORT_SPAN
