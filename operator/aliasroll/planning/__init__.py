"""Pure decisions: (spec, registry answer, observed objects, previous status, clock) -> plan.

Nothing in this package does I/O (`lint-imports` holds it to that, .importlinter), so every rule is
tested with tables of named cases. The modules: `state` and `observed` (inputs), `version_decision`
(which version each track runs), `capacity` (how many pods each track may run now), `canary` (the
watched canary's run), `workloads` (Deployment and Service manifests), `routers/` (the traffic split
and its routing objects), `health` (conditions), `history` (the audit trail and its events),
`registry_writes` (alias moves and version tags), `status` (the typed shape of status), `planner`
(puts them together) and `next_pass` (when the next pass is due). `fleet` and `fleet_status` are the
decision of a Deployment per version with warm previous versions (issue 23), not wired into the
planner yet (docs/design/rollback-window.md).
"""
