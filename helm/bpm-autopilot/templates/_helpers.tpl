{{/* Names, labels and the pieces every pod shares. */}}

{{- define "bpm-autopilot.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "bpm-autopilot.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "bpm-autopilot.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "bpm-autopilot.selectorLabels" -}}
app.kubernetes.io/name: {{ include "bpm-autopilot.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "bpm-autopilot.labels" -}}
helm.sh/chart: {{ include "bpm-autopilot.chart" . }}
{{ include "bpm-autopilot.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: bpm-autopilot
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Labels of one component (api, worker, critic-retrain): call with (dict "root" $ "component" "api"). */}}
{{- define "bpm-autopilot.componentLabels" -}}
{{ include "bpm-autopilot.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "bpm-autopilot.componentSelector" -}}
{{ include "bpm-autopilot.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "bpm-autopilot.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "bpm-autopilot.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "bpm-autopilot.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "bpm-autopilot.secretName" -}}
{{- default (printf "%s-secrets" (include "bpm-autopilot.fullname" .)) .Values.auth.existingSecret }}
{{- end }}

{{- define "bpm-autopilot.claimName" -}}
{{- default (printf "%s-data" (include "bpm-autopilot.fullname" .)) .Values.persistence.existingClaim }}
{{- end }}

{{/* The worker ceiling: kafka.partitions unless a smaller workers.autoscaling.maxReplicas is set. */}}
{{- define "bpm-autopilot.workersMax" -}}
{{- $partitions := int .Values.kafka.partitions }}
{{- $max := int (default 0 .Values.workers.autoscaling.maxReplicas) }}
{{- if eq $max 0 }}{{ $partitions }}{{ else }}{{ $max }}{{ end }}
{{- end }}

{{/* Checks that span several values (the schema checks each value on its own). */}}
{{- define "bpm-autopilot.validate" -}}
{{- $partitions := int .Values.kafka.partitions }}
{{- if gt (int .Values.workers.replicas) $partitions }}
{{- fail (printf "workers.replicas (%d) must not exceed kafka.partitions (%d): a worker beyond the partition count gets no partition" (int .Values.workers.replicas) $partitions) }}
{{- end }}
{{- if gt (int (include "bpm-autopilot.workersMax" .)) $partitions }}
{{- fail (printf "workers.autoscaling.maxReplicas (%s) must not exceed kafka.partitions (%d)" (include "bpm-autopilot.workersMax" .) $partitions) }}
{{- end }}
{{- if and .Values.workers.autoscaling.enabled (gt (int .Values.workers.autoscaling.minReplicas) (int (include "bpm-autopilot.workersMax" .))) }}
{{- fail "workers.autoscaling.minReplicas must not exceed workers.autoscaling.maxReplicas" }}
{{- end }}
{{- if and .Values.policy.server.enabled (not .Values.policy.server.image.tag) }}
{{- fail "policy.server.image.tag is required when policy.server.enabled: pin the inference engine's version" }}
{{- end }}
{{- if and (not .Values.auth.existingSecret) (not .Values.database.url) }}
{{- fail "database.url (or auth.existingSecret with the key database-url) is required" }}
{{- end }}
{{- end }}

{{/* Environment every container gets besides the ConfigMap: the database URLs from the Secret. */}}
{{- define "bpm-autopilot.secretEnv" -}}
- name: AUTOPILOT_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "bpm-autopilot.secretName" . }}
      key: database-url
- name: AUTOPILOT_FEEDBACK_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "bpm-autopilot.secretName" . }}
      key: feedback-url
{{- end }}

{{- define "bpm-autopilot.podSecurityContext" -}}
{{ toYaml .Values.podSecurityContext }}
{{- end }}

{{- define "bpm-autopilot.containerSecurityContext" -}}
{{ toYaml .Values.securityContext }}
{{- end }}

{{/* Volumes: the shared data volume and an emptyDir on /tmp. */}}
{{- define "bpm-autopilot.dataVolume" -}}
- name: data
{{- if .Values.persistence.enabled }}
  persistentVolumeClaim:
    claimName: {{ include "bpm-autopilot.claimName" . }}
{{- else }}
  emptyDir: {}
{{- end }}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpSizeLimit | default "1Gi" }}
{{- end }}
