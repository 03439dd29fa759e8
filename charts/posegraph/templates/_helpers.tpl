{{/* Names ------------------------------------------------------------------------------------ */}}

{{- define "posegraph.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The prefix of every object's name: the release name, plus the chart name unless included. */}}
{{- define "posegraph.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "posegraph.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels: the app.kubernetes.io set on everything; selectors use the stable subset. */}}
{{- define "posegraph.labels" -}}
helm.sh/chart: {{ include "posegraph.chart" . }}
{{ include "posegraph.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: posegraph
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "posegraph.selectorLabels" -}}
app.kubernetes.io/name: {{ include "posegraph.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of one component: include "posegraph.componentLabels" (list . "operator") */}}
{{- define "posegraph.componentLabels" -}}
{{ include "posegraph.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{- define "posegraph.componentSelector" -}}
{{ include "posegraph.selectorLabels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{/* Images ----------------------------------------------------------------------------------- */}}

{{/* include "posegraph.image" (list .Values.images .Values.images.posegraph) */}}
{{- define "posegraph.image" -}}
{{- $images := index . 0 }}{{- $image := index . 1 }}
{{- if $images.registry }}
{{- printf "%s/%s:%s" $images.registry $image.repository $image.tag }}
{{- else }}
{{- printf "%s:%s" $image.repository $image.tag }}
{{- end }}
{{- end }}

{{- define "posegraph.imagePullSecrets" -}}
{{- with .Values.images.pullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
{{- end }}

{{/* Objects' names ---------------------------------------------------------------------------- */}}

{{- define "posegraph.operatorName" -}}{{ include "posegraph.fullname" . }}-operator{{- end }}
{{- define "posegraph.postgresqlName" -}}{{ include "posegraph.fullname" . }}-postgresql{{- end }}
{{- define "posegraph.objectStoreName" -}}{{ include "posegraph.fullname" . }}-s3{{- end }}

{{/* The Secret PoseJobs name in spec.results.secretRef. */}}
{{- define "posegraph.resultsSecret" -}}
{{- .Values.results.existingSecret | default (printf "%s-results" (include "posegraph.fullname" .)) }}
{{- end }}

{{/* A generated password kept across upgrades: the value already in Secret <name> under "password"
(lookup; absent when rendering offline), else a new random one. (list . <secret name> <length>) */}}
{{- define "posegraph.keptPassword" -}}
{{- $ctx := index . 0 }}{{- $length := index . 2 }}
{{- $existing := lookup "v1" "Secret" $ctx.Release.Namespace (index . 1) }}
{{- if and $existing (hasKey ($existing.data | default dict) "password") }}{{ index $existing.data "password" | b64dec }}
{{- else }}{{ randAlphaNum $length }}{{ end }}
{{- end }}

{{/* The Secret whose keys become the runners' environment ("" for none). */}}
{{- define "posegraph.jobEnvSecret" -}}
{{- if .Values.jobRunner.envSecret }}{{ .Values.jobRunner.envSecret }}
{{- else if .Values.objectStore.enabled }}{{ include "posegraph.objectStoreName" . }}
{{- end }}
{{- end }}

{{/* Pod security: the "restricted" Pod Security Standard --------------------------------------- */}}

{{- define "posegraph.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ . | default 1000 }}
runAsGroup: {{ . | default 1000 }}
fsGroup: {{ . | default 1000 }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "posegraph.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* The web UI's name (its Deployment, Service, ServiceAccount, Role) and its auth Secret's. */}}
{{- define "posegraph.uiName" -}}
{{ printf "%s-ui" (include "posegraph.fullname" .) }}
{{- end }}

{{- define "posegraph.uiAuthSecret" -}}
{{ .Values.ui.auth.existingSecret | default (printf "%s-ui-auth" (include "posegraph.fullname" .)) }}
{{- end }}
