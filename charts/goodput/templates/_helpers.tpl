{{/* Names follow the usual Helm conventions: fullname is truncated to the 63-character DNS limit. */}}
{{- define "goodput.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "goodput.fullname" -}}
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

{{- define "goodput.operatorName" -}}
{{- printf "%s-operator" (include "goodput.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "goodput.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "goodput.labels" -}}
helm.sh/chart: {{ include "goodput.chart" . }}
{{ include "goodput.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: goodput
{{- end }}

{{- define "goodput.selectorLabels" -}}
app.kubernetes.io/name: {{ include "goodput.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "goodput.operatorLabels" -}}
{{ include "goodput.labels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "goodput.operatorSelectorLabels" -}}
{{ include "goodput.selectorLabels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "goodput.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "goodput.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The image reference: a digest pins it; otherwise the tag, defaulting to the appVersion. */}}
{{- define "goodput.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{- define "goodput.peeringName" -}}
{{- default (include "goodput.fullname" .) .Values.operator.peering.name }}
{{- end }}

{{/* Empty when the operator watches every namespace. */}}
{{- define "goodput.watchNamespace" -}}
{{- .Values.operator.watchNamespace }}
{{- end }}

{{/*
Whether to create Prometheus Operator objects: "always", "never", or "auto" = only when the
cluster serves the kind (so a plain install never fails on a missing CRD).
Call with (list $ "ServiceMonitor").
*/}}
{{- define "goodput.prometheusOperatorHas" -}}
{{- $root := index . 0 }}
{{- $kind := index . 1 }}
{{- $mode := $root.Values.monitoring.prometheusOperator }}
{{- if or (eq $mode "always") (and (eq $mode "auto") ($root.Capabilities.APIVersions.Has (printf "monitoring.coreos.com/v1/%s" $kind))) }}true{{- end }}
{{- end }}

{{- define "goodput.monitoringLabels" -}}
{{ include "goodput.labels" . }}
{{- with .Values.monitoring.labels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* A label map as a kubectl selector: a=1,b=2 (sorted, as Go templates range over maps). */}}
{{- define "goodput.labelSelector" -}}
{{- $pairs := list }}
{{- range $k, $v := . }}
{{- $pairs = append $pairs (printf "%s=%s" $k $v) }}
{{- end }}
{{- join "," $pairs }}
{{- end }}

{{/* The operator's rules on namespaced resources (ClusterRole or Role);
(dict "peerings" LIST "readTLSSecrets" BOOL). */}}
{{- define "goodput.namespacedRules" -}}
# Watch LLMDeployments; kopf keeps its handler progress in their annotations.
- apiGroups: ["goodput.dev"]
  resources: ["llmdeployments"]
  verbs: ["get", "list", "watch", "patch", "update"]
- apiGroups: ["goodput.dev"]
  resources: ["llmdeployments/status"]
  verbs: ["get", "patch", "update"]
# The autoscaler moves spec.replicas through the scale subresource, as an HPA would.
- apiGroups: ["goodput.dev"]
  resources: ["llmdeployments/scale"]
  verbs: ["get", "patch", "update"]
# The serving workload, its endpoint and the gateway config (server-side apply).
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
- apiGroups: [""]
  resources: ["services", "configmaps"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
# The cluster router (spec.routing): its identity, and read access to EndpointSlices, which the
# operator may grant only because it holds it.
- apiGroups: [""]
  resources: ["serviceaccounts"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["roles", "rolebindings"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
- apiGroups: ["discovery.k8s.io"]
  resources: ["endpointslices"]
  verbs: ["get", "list", "watch"]
{{- if .readTLSSecrets }}
# spec.gateway.tls: whether the named Secret exists and holds a usable certificate (for the
# status). Only get: Secrets are never listed or watched. Opt-in: rbac.readTLSSecrets.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
{{- end }}
# Which nodes each replica landed on.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["", "events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
# Peering between operator replicas (--peering).
- apiGroups: ["kopf.dev"]
  resources: {{ toJson .peerings }}
  verbs: ["get", "list", "watch", "patch"]
{{- end }}

{{/* A node selector map as the operator's GOODPUT_ROUTER_NODE_SELECTOR: k=v,k=v (sorted). */}}
{{- define "goodput.routerNodeSelector" -}}
{{- $items := list -}}
{{- range $key, $value := . -}}
{{- $items = append $items (printf "%s=%s" $key $value) -}}
{{- end -}}
{{- join "," $items -}}
{{- end -}}
