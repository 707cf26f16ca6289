"""The control loop: one reconcile pass (reconciler), one worker per resource (scheduler), and the
Kopf handlers that feed them (handlers)."""
