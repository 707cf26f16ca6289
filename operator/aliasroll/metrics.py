"""The operator's Prometheus metrics (one process-wide set, served by `aliasroll.http`).

Names and labels are documented in docs/operations/metrics.md; labels stay low in cardinality: no
resource names, no model names, no registry addresses.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# Passes take milliseconds when nothing changes and seconds when a registry is slow.
_PASS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_CALL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# An alias move reaches the pod template within a poll interval (minutes) or, pushed, within a second.
_MOVE_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)

PASSES = Counter(
    "aliasroll_passes_total",
    "Reconcile passes, by result (ok, failed, gone)",
    ["result"],
)
PASS_INTERVAL_SECONDS = Histogram(
    "aliasroll_pass_interval_seconds",
    "Time from one pass of a resource to its next, over every resource: a resource passed every "
    "second while nothing changes shows as passes in the lowest buckets",
    buckets=(0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0),
)
PASS_SECONDS = Histogram(
    "aliasroll_pass_duration_seconds",
    "Duration of a reconcile pass, by result",
    ["result"],
    buckets=_PASS_BUCKETS,
)
REGISTRY_CALLS = Counter(
    "aliasroll_registry_calls_total",
    "Calls to MLflow registries, by call (model_aliases, all_model_aliases, version, set_alias, "
    "delete_alias, set_version_tags) and outcome (ok, or the error's reason)",
    ["call", "outcome"],
)
REGISTRY_CALL_SECONDS = Histogram(
    "aliasroll_registry_call_duration_seconds",
    "Latency of calls to MLflow registries, by call",
    ["call"],
    buckets=_CALL_BUCKETS,
)
FAST_SWITCH_SECONDS = Histogram(
    "aliasroll_fast_switch_seconds",
    "Version mode (spec.rollback): a fast move of @production to warm pods, by kind (rollback: back "
    "to a warm version; promotion: to the canary's routed pods), from the pass that saw the move to "
    "the one that unrouted the version it replaces, as the FastRollback event says it",
    ["kind"],
    buckets=(0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0),
)
ALIAS_MOVE_APPLIED_SECONDS = Histogram(
    "aliasroll_alias_move_to_applied_seconds",
    "From an alias move (the registry's webhook time when pushed, else when a poll saw it) to the end "
    "of the first successful pass of each resource that follows the model",
    buckets=_MOVE_BUCKETS,
)
WEBHOOK_DELIVERIES = Counter(
    "aliasroll_webhook_deliveries_total",
    "Registry webhook deliveries, by outcome (accepted, duplicate, bad_signature, stale, malformed, "
    "unknown_model, ignored_event; refused before a check: unknown_registry, rate_limited, busy, "
    "too_large, slow, standby; memory_full, unavailable)",
    ["outcome"],
)
QUEUE_DEPTH = Gauge(
    "aliasroll_queue_depth",
    "Resources woken and waiting for their next pass",
)
LEADER = Gauge(
    "aliasroll_leader",
    "1 while this process leads (holds the Lease, or leader election is off) and writes, 0 otherwise",
)
EVENTS = Counter(
    "aliasroll_events_total",
    "Kubernetes events about ModelDeployments, by outcome (written, folded into an earlier one's "
    "count, failed, dropped: the queue was full or this process stopped leading)",
    ["outcome"],
)
LEADERSHIP_CHANGES = Counter(
    "aliasroll_leadership_changes_total",
    "Leadership transitions of this process: acquired, lost (not renewed in time, or taken by "
    "another), released (on shutdown)",
    ["change"],
)
REGISTRY_WRITES = Counter(
    "aliasroll_registry_writes_total",
    "Writes to MLflow registries, one per tag or alias change, by kind (version_tag, alias) and "
    "outcome (written; moved: an alias no longer named what the change expected, so it was left to "
    "the human who moved it; not_leading: stopped by the leadership fence; else the refusal's "
    "reason: RegistryAuthFailed, RegistryUnreachable, ModelNotFound, RegistryRejected, ...)",
    ["kind", "outcome"],
)
RECORD_WAKES = Counter(
    "aliasroll_record_wakes_total",
    "Resources woken by the version tags' writer, by reason (written: its last tag is written; "
    "refused: a refusal its last pass was not told of, at most once every 300 s per resource)",
    ["reason"],
)
VERSION_TAGS_QUEUED = Gauge(
    "aliasroll_version_tags_queued",
    "Version tags planned and not written yet, refused ones included",
)
VERSION_TAGS_DROPPED = Counter(
    "aliasroll_version_tags_dropped_total",
    "Version tags given up before they were written, by reason (queue_full: not taken, the "
    "registry's queue is full, the resource's next pass hands it over again; forgotten: its resource "
    "is gone or this process stopped leading; not_leading: a gone resource's outcome or span end "
    "refused by the leadership fence; refused: one refused 8 times after its resource was gone)",
    ["reason"],
)
