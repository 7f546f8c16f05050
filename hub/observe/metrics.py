"""Every process's own Prometheus metrics (prometheus-client), defined in one place.

Each process has a registry of its own, so a process exports only what it measures:
`WORKER` (`hub worker`), `VOICE` (`hub voice`), `API` (`hub api`, appended to the API's
database-backed `/metrics`). Instrumentation sites call one of the small functions below.

`hub worker` runs jobs in its own process (RQ's SimpleWorker: no fork per job), so plain
in-process counters survive from job to job; no multiprocess directory is needed.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

PORT_SPAN = 16  # a busy port: the next of PORT_SPAN ports (several workers on one host)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
SETUP_BUCKETS = (0.5, 1.0, 2.0, 3.0, 5.0, 8.0, 13.0, 20.0, 30.0, 45.0, 60.0)

WORKER = CollectorRegistry()
VOICE = CollectorRegistry()
API = CollectorRegistry()
for _registry in (WORKER, VOICE, API):  # process_cpu_seconds_total, memory, open fds
    ProcessCollector(registry=_registry)

ATTEMPTS = Counter("hub_attempts", "Attempts recorded, by transport and outcome.",
                   ["transport", "outcome"], registry=WORKER)
DELIVERY_RESULTS = Counter(
    "hub_delivery_results",
    "Deliveries moved by a recorded attempt, by transport and the status they moved to"
    " (in_progress: waiting for the provider's receipt).",
    ["transport", "status"], registry=WORKER)
ATTEMPT_SECONDS = Histogram("hub_attempt_duration_seconds",
                            "Provider call duration of one attempt, by transport.",
                            ["transport"], buckets=LATENCY_BUCKETS, registry=WORKER)
VOICE.register(ATTEMPTS)  # `hub voice` records its calls' attempts itself
VOICE.register(DELIVERY_RESULTS)
WEBHOOKS = Counter("hub_webhook_deliveries", "Webhook POSTs by result (delivered, retry, failed).",
                   ["result"], registry=WORKER)

CALLS_ACTIVE = Gauge("hub_voice_calls_active", "Calls in progress on this controller, per trunk.",
                     ["trunk"], registry=VOICE)
CALL_SETUP_SECONDS = Histogram("hub_voice_call_setup_seconds",
                               "Time from originate to the channel going Up.",
                               buckets=SETUP_BUCKETS, registry=VOICE)
ARI_CONNECTED = Gauge("hub_ari_connected", "1 while the ARI websocket is connected and ready.",
                      registry=VOICE)
AMI_CONNECTED = Gauge("hub_ami_connected", "1 while logged in to AMI.", registry=VOICE)

RECEIPTS = Counter("hub_receipts", "Provider receipts (status callbacks) by result"
                   " (applied, ignored, stored: came before the attempt was recorded).",
                   ["result"], registry=API)
OVERLOADED = Counter("hub_api_overloaded", "Client-API requests refused at once with 503"
                     " overloaded (past HUB_API_MAX_IN_FLIGHT).", registry=API)


def api_metric_names() -> set[str]:
    """The families the API measures itself (without the process collector's)."""
    return {family.name for metric in (RECEIPTS, OVERLOADED) for family in metric.collect()}


def exposition(registry: CollectorRegistry) -> str:
    """The registry in the Prometheus text format (label values escaped by the library)."""
    return generate_latest(registry).decode()


# -- one-line instrumentation ----------------------------------------------------------
def recorded(transport: str, outcomes: Iterable[str], moved: Iterable[str]) -> None:
    """A committed recording: its attempts' outcomes and its deliveries' new statuses."""
    for outcome in outcomes:
        ATTEMPTS.labels(transport, outcome).inc()
    for status in moved:
        DELIVERY_RESULTS.labels(transport, status).inc()


def webhook(result: str) -> None:
    WEBHOOKS.labels(result).inc()


def calls_active(per_trunk: dict[str, int]) -> None:
    """The controller's live calls per trunk; a trunk gone quiet reads 0."""
    for labels in list(CALLS_ACTIVE._metrics):  # trunks seen before and now idle
        if labels[0] not in per_trunk:
            CALLS_ACTIVE.labels(*labels).set(0)
    for trunk, n in per_trunk.items():
        CALLS_ACTIVE.labels(trunk).set(n)


def ari_connected(up: bool) -> None:
    ARI_CONNECTED.set(1 if up else 0)


def ami_connected(up: bool) -> None:
    """The AMI client calls this on login (True) and on losing the connection (False)."""
    AMI_CONNECTED.set(1 if up else 0)


def receipt(result: str) -> None:
    RECEIPTS.labels(result).inc()


def overloaded() -> None:
    OVERLOADED.inc()


class QueueDepth(Collector):
    """`hub_queue_depth{queue}`, read from Redis at scrape time (sampled, never stale)."""

    def __init__(self, queues: Iterable[str], depth: Callable[[str], int]) -> None:
        self.queues = tuple(queues)
        self.depth = depth

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("hub_queue_depth", "Jobs waiting per RQ queue.",
                                   labels=["queue"])
        for q in self.queues:
            try:
                family.add_metric([q], self.depth(q))
            except Exception as exc:  # Redis away: no sample rather than a failed scrape
                log.debug("queue depth of %s not read: %s", q, exc)
        yield family


def serve(registry: CollectorRegistry, host: str, port: int, what: str) -> int | None:
    """Serve `registry` on host:port, or on the next free of PORT_SPAN ports; port 0
    disables. Returns the bound port (logged), or None."""
    if port == 0:
        return None
    for candidate in range(port, port + PORT_SPAN):
        try:
            start_http_server(candidate, addr=host, registry=registry)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            continue
        log.info("%s metrics on http://%s:%d/metrics", what, host, candidate)
        return candidate
    log.warning("%s metrics not served: ports %d-%d are all taken", what, port,
                port + PORT_SPAN - 1)
    return None
