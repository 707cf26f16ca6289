"""The names aliasroll puts on what it owns and reads back: labels, annotations, the field manager.

planning/workloads.py writes them into manifests; kube/ selects, watches and applies by them, and
controller/ reads them off pods. They sit here, at the bottom of the layers (.importlinter), so the
layers that do I/O need nothing of planning/ to know them. Changing one strands the objects that
carry the old name: the operator would no longer find or own them.
"""

from typing import Final

LABEL_MANAGED_BY: Final = "app.kubernetes.io/managed-by"
LABEL_INSTANCE: Final = "app.kubernetes.io/instance"
LABEL_COMPONENT: Final = "app.kubernetes.io/component"
LABEL_OWNER: Final = "aliasroll.io/modeldeployment"
LABEL_TRACK: Final = "aliasroll.io/track"
LABEL_VERSION: Final = "aliasroll.io/model-version"
# Version mode (spec.rollback): a Deployment per version, whose pods carry a readiness gate the
# operator sets to route the version or not. The label marks those Deployments and pods (pod changes
# wake their resource: a new pod waits for its gate, a Ready pod lets a leaving version go); the role
# (production, canary, leaving, warm) is on the Deployment only, since a pod template change rolls pods.
LABEL_GATED: Final = "aliasroll.io/gated"
LABEL_ROLE: Final = "aliasroll.io/role"
READINESS_GATE: Final = "aliasroll.io/routed"
# The holdout gate's Job (spec.canary.gate) and its pod: a digest of what the Job judges with.
LABEL_GATE_DIGEST: Final = "aliasroll.io/gate-digest"
# The Deployment controller's label on the pods of one ReplicaSet (named <deployment>-<hash>).
LABEL_POD_TEMPLATE_HASH: Final = "pod-template-hash"
ANNOTATION_MODEL_URI: Final = "aliasroll.io/model-uri"
ANNOTATION_RUN_ID: Final = "aliasroll.io/run-id"
# Server-side apply's field manager, and the value of LABEL_MANAGED_BY.
MANAGER: Final = "aliasroll"
