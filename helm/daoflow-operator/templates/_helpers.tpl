{{- define "daoflow.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "daoflow.runnerImage" -}}
{{ .Values.runner.image | default (include "daoflow.image" .) }}
{{- end -}}

{{/* The name of the operator's cluster-scoped objects (ClusterRole, binding, its admission policies):
fullnameOverride lets a second release (a test beside an installed operator) name its own. */}}
{{- define "daoflow.clusterName" -}}
{{ .Values.fullnameOverride | default "daoflow-operator" }}
{{- end -}}

{{- define "daoflow.serviceAccountName" -}}
daoflow-operator
{{- end -}}

{{/* The labels of the operator's pod and of the Deployment's selector. */}}
{{- define "daoflow.selectorLabels" -}}
app.kubernetes.io/name: daoflow-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* commonLabels and commonAnnotations, for the metadata of every object of the chart. */}}
{{- define "daoflow.commonMetadata" -}}
{{- with .Values.commonLabels }}
labels:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.commonAnnotations }}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/*
The operator's rights in the namespaces it watches: one ClusterRole when it watches all of them,
a Role in each when watchNamespaces lists them. Keep equal to manifests/rbac.yaml (a test renders both).
*/}}
{{- define "daoflow.namespacedRules" -}}
# Restores: watched; patched or updated only for the operator's own finalizer, all else is status.
- apiGroups: [backup.daoflow.dev]
  resources: [backuprestores]
  verbs: [get, list, watch, patch, update]
- apiGroups: [backup.daoflow.dev]
  resources: [backuprestores/status]
  verbs: [get, patch]
# Jobs carry an ownerReference with blockOwnerDeletion, which needs this.
- apiGroups: [backup.daoflow.dev]
  resources: [backuprestores/finalizers]
  verbs: [update]
# The source of a restore: read-only.
- apiGroups: [backup.daoflow.dev]
  resources: [backupruns, backupdestinations]
  verbs: [get, list, watch]
# Approvals: read; their status written only to mark one used and to show its expiry. An admission
# policy (manifests/approvals.yaml) refuses any decision written by this ServiceAccount.
- apiGroups: [backup.daoflow.dev]
  resources: [restoreapprovals]
  verbs: [get, list, watch]
- apiGroups: [backup.daoflow.dev]
  resources: [restoreapprovals/status]
  verbs: [get, patch]
# The restore Job: created once, never updated; deleted only when its pod cannot start.
# The policy daoflow-operator-job-shape holds what it creates to the runner's shape.
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, watch, create, delete]
# The pod tells whether the runner started, and its termination message is the runner's report.
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch]  # watch: the report of a cancelled restore's pod, seen before the pod goes
# A running restore's progress is read from its runner's log (the runner has no API token).
- apiGroups: [""]
  resources: [pods/log]
  verbs: [get]
# The target claim is checked before the Job exists (only its metadata and status are used).
- apiGroups: [""]
  resources: [persistentvolumeclaims]
  verbs: [get]
# Events are posted on restores, and a pod's events are read: mount failures are reported only there.
- apiGroups: [""]
  resources: [events]
  verbs: [create, list]
# One restore per target at a time: a Lease per target, created before the Job is created,
# taken over (a conditional patch) from a restore that ended, deleted when its holder ends.
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  verbs: [get, create, patch, delete]
{{- end -}}

{{/* Rights that have no namespace: they stay cluster-wide in both modes. */}}
{{- define "daoflow.clusterRules" -}}
# May the requester restore into the target? Asked of the API server once, right before the Job
# is created (or a dry run's plan is done): the verb restore on the claim or the database's Secret.
- apiGroups: [authorization.k8s.io]
  resources: [subjectaccessreviews]
  verbs: [create]
# The policies that record the requester (manifests/scopes.yaml): without them its annotations are
# the client's word, and real restores are refused. Likewise the decider of an approval (manifests/approvals.yaml).
- apiGroups: [admissionregistration.k8s.io]
  resources: [mutatingadmissionpolicies, mutatingadmissionpolicybindings]
  resourceNames: [daoflow-record-requester, daoflow-record-decider]
  verbs: [get]
- apiGroups: [admissionregistration.k8s.io]
  resources: [validatingadmissionpolicies, validatingadmissionpolicybindings]
  resourceNames: [daoflow-requester-is-immutable, daoflow-approval-decision]
  verbs: [get]
{{- end -}}
