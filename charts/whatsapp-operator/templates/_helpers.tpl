{{/* Object name prefix: <release>-<chart>, or the release name when it already contains the chart name. */}}
{{- define "wao.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "wao.operator" -}}{{ include "wao.fullname" . }}-operator{{- end -}}
{{- define "wao.hub" -}}{{ include "wao.fullname" . }}-hub{{- end -}}

{{/* Labels on every object. */}}
{{- define "wao.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/part-of: whatsapp-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The component label ("operator" or "hub"), next to wao.labels. */}}
{{- define "wao.name" -}}
app.kubernetes.io/name: whatsapp-{{ .component }}
{{- end -}}

{{/* Selector labels of one component ("operator" or "hub"). */}}
{{- define "wao.selector" -}}
app.kubernetes.io/name: whatsapp-{{ .component }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- end -}}

{{- define "wao.image" -}}
{{ .image.repository }}:{{ .image.tag | default .root.Chart.AppVersion }}
{{- end -}}

{{/* Namespaces. */}}
{{- define "wao.sessionNamespace" -}}
{{- .Values.hub.sessionNamespace | default .Release.Namespace -}}
{{- end -}}
{{- /* The namespace the operator reconciles: operator.watchNamespace, by default the hub's session
namespace; empty for every namespace ("*", an explicit choice: its RBAC is then cluster-wide). */ -}}
{{- define "wao.operatorNamespace" -}}
{{- $ns := .Values.operator.watchNamespace | default (include "wao.sessionNamespace" .) -}}
{{- if ne $ns "*" }}{{ $ns }}{{ end -}}
{{- end -}}
{{- define "wao.hubTokenKeySecret" -}}
{{- .Values.hubTokenKey.existingSecret | default (printf "%s-hub-token-key" (include "wao.fullname" .)) -}}
{{- end -}}
{{- define "wao.jwtSecret" -}}
{{- .Values.hub.auth.jwt.existingSecret | default (printf "%s-jwt" (include "wao.fullname" .)) -}}
{{- end -}}

{{/* The restricted Pod Security profile, for pods and containers. */}}
{{- define "wao.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}
{{- define "wao.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
privileged: false
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Spread a component's replicas over nodes unless affinity is given. */}}
{{- define "wao.affinity" -}}
{{- if .affinity -}}
{{ toYaml .affinity }}
{{- else -}}
podAntiAffinity:
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- include "wao.selector" . | nindent 12 }}
{{- end -}}
{{- end -}}
