"""The control loop: one reconcile pass (reconciler), one worker per resource (scheduler), the Kopf
handlers that feed them (handlers) and the runtime that wires them together (runtime)."""
