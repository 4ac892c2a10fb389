{{/*
Names and labels. The hub's configuration (users, permissions) is .Values.generated, written by
`casebridge federation render-nats FILE --hub`: templates place it, they never write a rule.
*/}}

{{- define "hub.labels" -}}
app.kubernetes.io/name: casebridge-hub
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: casebridge
app.kubernetes.io/component: hub
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "hub.selector" -}}
app.kubernetes.io/name: casebridge-hub
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "hub.containerSecurity" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}
