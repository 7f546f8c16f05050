"""Tunables that are not user settings, and Redis key names. Units are in the names."""

from typing import Final

TRANSPORT_TYPES: Final = ("email", "sms", "whatsapp", "voice", "slack", "api")
QUEUES: Final = (*TRANSPORT_TYPES, "webhooks", "maintenance")

# Session statuses (DESIGN §4).
S_SCHEDULED: Final = "scheduled"
S_QUEUED: Final = "queued"
S_RUNNING: Final = "running"
S_COMPLETED: Final = "completed"
S_AWAITING: Final = "awaiting_trigger"
S_PAUSED: Final = "paused"
S_CANCELLED: Final = "cancelled"
SESSION_STATUSES: Final = (
    S_SCHEDULED, S_QUEUED, S_RUNNING, S_COMPLETED, S_AWAITING, S_PAUSED, S_CANCELLED,
)
ACTIVE_SESSION_STATUSES: Final = (S_QUEUED, S_RUNNING)

# Delivery statuses.
D_PENDING: Final = "pending"
D_IN_PROGRESS: Final = "in_progress"
D_DELIVERED: Final = "delivered"
D_FAILED: Final = "failed"
D_RETRY: Final = "retry_scheduled"
D_CANCELLED: Final = "cancelled"
DELIVERY_STATUSES: Final = (D_PENDING, D_IN_PROGRESS, D_DELIVERED, D_FAILED, D_RETRY, D_CANCELLED)
FINAL_DELIVERY_STATUSES: Final = (D_DELIVERED, D_FAILED, D_CANCELLED)

# Attempt outcomes shared by every transport (voice adds its own, DESIGN §4).
O_DELIVERED: Final = "delivered"
O_TEMPORARY: Final = "temporary_failure"
O_PERMANENT: Final = "permanent_failure"
O_SUPPRESSED: Final = "suppressed"

API_KEY_PREFIX: Final = "hub_"
WEBHOOK_SECRET_PREFIX: Final = "whsec_"

REDIS_PREFIX: Final = "hub:"
RECONCILER_LOCK_KEY: Final = REDIS_PREFIX + "lock:reconciler"
SCHEDULER_LOCK_PREFIX: Final = REDIS_PREFIX + "lock:scheduler:"  # + queue name

JOB_TIMEOUT_S: Final = 600  # per session a job serves at once (see SESSIONS_AT_ONCE)
# A job serving several sessions kicked together runs this many of them at a time.
SESSIONS_AT_ONCE: Final = 4
JOB_RESULT_TTL_S: Final = 60
JOB_FAILURE_TTL_S: Final = 86_400
FLUSH_EVERY_RESULTS: Final = 50
FLUSH_EVERY_S: Final = 0.2
# Delay before the reconciler treats due work as lost by Redis (normal jobs start sooner).
RECONCILE_GRACE_S: Final = 10
MAX_PARALLEL_JOBS_PER_SESSION: Final = 8
MAX_REDIRECTS: Final = 3
