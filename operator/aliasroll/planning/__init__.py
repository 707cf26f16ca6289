"""Pure decisions: (spec, registry answer, observed objects, previous status, clock) -> plan.

Nothing in this package does I/O, so every rule is tested with tables of named cases. The modules:
`state` (inputs), `decide` (which version each track runs), `workloads` (Deployment and Service
manifests), `status` (conditions, history, events) and `planner` (puts them together with a router).
"""
