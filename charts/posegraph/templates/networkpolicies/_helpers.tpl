{{/* NetworkPolicy building blocks (networkpolicies/*.yaml). README.md, "Network policies". ---- */}}

{{/* Where PoseJobs run, and so where PosePipelines (stages, router) and runners live: the release
namespace and jobRunner.extraNamespaces, as JSON (fromJsonArray). */}}
{{- define "posegraph.np.namespaces" -}}
{{- prepend .Values.jobRunner.extraNamespaces .Release.Namespace | uniq | toJson }}
{{- end }}

{{/* Pod selectors. The operator's children carry the labels of posegraph.graph.kserve_objects
(managed-by=posegraph, posegraph.io/pipeline, posegraph.io/stage on InferenceServices); KServe
copies an InferenceService's or InferenceGraph's labels onto its pods and adds its own:
serving.kserve.io/inferenceservice and component=predictor (predictor pods),
serving.kserve.io/inferencegraph (router pods). */}}
{{- define "posegraph.np.stagePods" -}}
matchLabels:
  app.kubernetes.io/managed-by: posegraph
  component: predictor
matchExpressions:
  - {key: posegraph.io/stage, operator: Exists}
  - {key: serving.kserve.io/inferenceservice, operator: Exists}
{{- end }}

{{- define "posegraph.np.routerPods" -}}
matchLabels:
  app.kubernetes.io/managed-by: posegraph
matchExpressions:
  - {key: posegraph.io/pipeline, operator: Exists}
  - {key: serving.kserve.io/inferencegraph, operator: Exists}
{{- end }}

{{/* PoseJob runners: the labels of posegraph.operator.resources.posejob_job. */}}
{{- define "posegraph.np.runnerPods" -}}
matchLabels:
  app.kubernetes.io/part-of: posegraph
  app.kubernetes.io/component: job-runner
matchExpressions:
  - {key: posegraph.io/posejob, operator: Exists}
{{- end }}

{{/* The chart's own pods: (list . "ui") */}}
{{- define "posegraph.np.componentPods" -}}
matchLabels:
  {{- include "posegraph.componentSelector" . | nindent 2 }}
{{- end }}

{{/* The object store's server, not its bucket hook (same component labels; the Job controller
adds batch.kubernetes.io/job-name to the hook's pod, Kubernetes >= 1.27). */}}
{{- define "posegraph.np.objectStorePods" -}}
{{ include "posegraph.np.componentPods" (list . "object-store") }}
matchExpressions:
  - {key: batch.kubernetes.io/job-name, operator: DoesNotExist}
{{- end }}

{{/* A namespaceSelector for the named namespaces (kubernetes.io/metadata.name is set by the API
server on every namespace). (list "a" "b") */}}
{{- define "posegraph.np.inNamespaces" -}}
matchExpressions:
  - key: kubernetes.io/metadata.name
    operator: In
    values: {{ toJson . }}
{{- end }}

{{/* Whether the operator's metrics port is opened: its ServiceMonitor is installed or scrapers are
named. The stages' and runners' metrics ports open only to named scrapers (no ServiceMonitor or
PodMonitor of the chart selects them). */}}
{{- define "posegraph.np.operatorMetricsOn" -}}
{{- if or .Values.serviceMonitor.enabled .Values.networkPolicy.metrics.namespaces }}true{{ end }}
{{- end }}

{{/* Who may scrape: the named namespaces, else (the operator's ServiceMonitor alone) any namespace. */}}
{{- define "posegraph.np.metricsFrom" -}}
{{- with .Values.networkPolicy.metrics.namespaces }}
- namespaceSelector:
    {{- include "posegraph.np.inNamespaces" . | nindent 4 }}
{{- else }}
- namespaceSelector: {}
{{- end }}
{{- end }}

{{/* Egress rules (list items) ---------------------------------------------------------------- */}}

{{- define "posegraph.np.egress.dns" -}}
{{- $dns := .Values.networkPolicy.dns }}
- to:
    - namespaceSelector:
        matchLabels: {kubernetes.io/metadata.name: {{ $dns.namespace }}}
      podSelector:
        matchLabels:
          {{- toYaml $dns.podLabels | nindent 10 }}
  ports:
    - {port: 53, protocol: UDP}
    - {port: 53, protocol: TCP}
{{- end }}

{{/* The API server answers on node or control-plane addresses (the kubernetes Service's endpoints),
which no pod selector reaches: CIDRs and ports. */}}
{{- define "posegraph.np.egress.apiServer" -}}
{{- $api := .Values.networkPolicy.apiServer }}
{{- if $api.cidrs }}
- to:
    {{- range $api.cidrs }}
    - ipBlock: {cidr: {{ . }}}
    {{- end }}
  ports:
    {{- range $api.ports }}
    - {port: {{ . }}, protocol: TCP}
    {{- end }}
{{- end }}
{{- end }}

{{/* S3 (and STS for IRSA) by CIDR; the in-cluster store (kind) by selector, in the release namespace. */}}
{{- define "posegraph.np.egress.s3" -}}
{{- $s3 := .Values.networkPolicy.s3 }}
{{- if $s3.cidrs }}
- to:
    {{- range $s3.cidrs }}
    - ipBlock: {cidr: {{ . }}}
    {{- end }}
  ports:
    {{- range $s3.ports }}
    - {port: {{ . }}, protocol: TCP}
    {{- end }}
{{- end }}
{{- if .Values.objectStore.enabled }}
- to:
    - namespaceSelector:
        matchLabels: {kubernetes.io/metadata.name: {{ .Release.Namespace }}}
      podSelector:
        {{- include "posegraph.np.objectStorePods" . | nindent 8 }}
  ports:
    - {port: {{ include "posegraph.port.objectStore" $ }}, protocol: TCP}
{{- end }}
{{- end }}

{{/* The results database: CIDRs, extra peers, the in-cluster PostgreSQL (kind) by selector. */}}
{{- define "posegraph.np.egress.database" -}}
{{- $db := .Values.networkPolicy.database }}
{{- if or $db.cidrs $db.peers }}
- to:
    {{- range $db.cidrs }}
    - ipBlock: {cidr: {{ . }}}
    {{- end }}
    {{- with $db.peers }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  ports:
    - {port: {{ $db.port }}, protocol: TCP}
{{- end }}
{{- if .Values.postgresql.enabled }}
- to:
    - namespaceSelector:
        matchLabels: {kubernetes.io/metadata.name: {{ .Release.Namespace }}}
      podSelector:
        {{- include "posegraph.np.componentPods" (list . "postgresql") | nindent 8 }}
  ports:
    - {port: {{ include "posegraph.port.postgresql" $ }}, protocol: TCP}
{{- end }}
{{- end }}

{{/* The user's extra egress rules of one component: (list . "stages") */}}
{{- define "posegraph.np.egress.extra" -}}
{{- with index (index . 0).Values.networkPolicy.extraEgress (index . 1) }}
{{- toYaml . }}
{{- end }}
{{- end }}
