{{/* Chart name, overridable. */}}
{{- define "kartflow.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name of the release's objects: the release name when it already contains the chart name
(`helm install kartflow ...` gives "kartflow", not "kartflow-kartflow"). 63 characters max
(DNS label).
*/}}
{{- define "kartflow.fullname" -}}
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

{{- define "kartflow.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels: must never change after install (Deployment selectors are immutable). */}}
{{- define "kartflow.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kartflow.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/* Kubernetes' recommended labels. */}}
{{- define "kartflow.labels" -}}
helm.sh/chart: {{ include "kartflow.chart" . }}
{{ include "kartflow.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | quote }}
app.kubernetes.io/part-of: kartflow
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "kartflow.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kartflow.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create=false: name an existing ServiceAccount" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* [registry/]repository:tag[@digest]; with a digest the runtime pulls exactly that image. */}}
{{- define "kartflow.image" -}}
{{- $repo := .Values.image.repository }}
{{- with .Values.image.registry }}{{ $repo = printf "%s/%s" (trimSuffix "/" .) $repo }}{{ end }}
{{- $ref := printf "%s:%s" $repo (.Values.image.tag | default .Chart.AppVersion) }}
{{- with .Values.image.digest }}{{ $ref = printf "%s@%s" $ref . }}{{ end }}
{{- $ref }}
{{- end }}

{{/* The leader-election Lease; per release, so two releases in one namespace do not share it. */}}
{{- define "kartflow.leaseName" -}}
{{- printf "%s-leader" (include "kartflow.fullname" .) }}
{{- end }}
