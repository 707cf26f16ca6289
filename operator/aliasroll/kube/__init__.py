"""Everything that talks to the Kubernetes API: observe owned objects, apply, prune, write status."""
