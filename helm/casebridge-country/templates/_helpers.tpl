{{/*
Names and labels. Everything Casebridge-specific (NATS configuration, users, permissions,
agencies) comes from .Values.generated, written by `casebridge federation render-nats`:
templates only place it, they never write a NATS rule of their own.
*/}}

{{- define "cb.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 19 | trimSuffix "-" -}}
{{- else -}}
{{- .Release.Name | trunc 19 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "cb.labels" -}}
app.kubernetes.io/name: casebridge-country
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: casebridge
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
casebridge.eu/country: {{ .Values.generated.country }}
{{- end -}}

{{- define "cb.selector" -}}
app.kubernetes.io/name: casebridge-country
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The NATS StatefulSet/headless Service name: fixed by the generated configuration (routes). */}}
{{- define "cb.nats" -}}
{{- .Values.generated.nats.service -}}
{{- end -}}

{{- define "cb.natsUrl" -}}
{{- printf "tls://%s:%v" (default (include "cb.nats" .) .Values.nats.clientHost) .Values.generated.nats.clientPort -}}
{{- end -}}

{{- define "cb.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* Container security context: non-root, read-only root filesystem, nothing added. */}}
{{- define "cb.containerSecurity" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "cb.podSecurity" -}}
runAsNonRoot: true
runAsUser: {{ .Values.podSecurity.runAsUser }}
runAsGroup: {{ .Values.podSecurity.runAsGroup }}
fsGroup: {{ .Values.podSecurity.fsGroup }}
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Probes on a Casebridge HTTP port: /healthz (alive) and /readyz (ready). */}}
{{- define "cb.probes" -}}
startupProbe:
  httpGet: {path: /healthz, port: {{ .port }}}
  periodSeconds: 2
  failureThreshold: 60
livenessProbe:
  httpGet: {path: /healthz, port: {{ .port }}}
  periodSeconds: 10
  timeoutSeconds: 3
  failureThreshold: 3
readinessProbe:
  httpGet: {path: /readyz, port: {{ .port }}}
  periodSeconds: 5
  timeoutSeconds: 3
  failureThreshold: 2
{{- end -}}

{{/* The mounts every Casebridge process needs: settings, its keys, public federation material, /tmp. */}}
{{- define "cb.appVolumes" -}}
- name: settings
  configMap:
    name: {{ .settings }}
- name: keys
  secret:
    secretName: {{ .secret }}
    defaultMode: 0440
- name: federation
  configMap:
    name: {{ .federation }}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- end -}}

{{- define "cb.appMounts" -}}
- {name: settings, mountPath: /etc/casebridge/settings, readOnly: true}
- {name: keys, mountPath: /etc/casebridge/keys, readOnly: true}
- {name: federation, mountPath: /etc/casebridge/federation, readOnly: true}
- {name: tmp, mountPath: /tmp}
{{- end -}}

{{- define "cb.passphraseEnv" -}}
- name: CASEBRIDGE_KEY_PASSPHRASE
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: key-passphrase
      optional: true
{{- end -}}

{{/* Settings of a node or gateway (docs/node-api.md, broker/gateway/settings.py), paths inside
the pod. A gateway (.gateway true) holds no key-agreement key and no API token: it reads no
case content and serves no API; only a node's settings name them. */}}
{{- define "cb.settings" -}}
{{- $root := .root -}}
{{- $keys := dict
  "signing_key" "/etc/casebridge/keys/signing.key"
  "signing_cert" "/etc/casebridge/keys/signing.pem" -}}
{{- $api := dict "host" "0.0.0.0" "port" .port -}}
{{- if not .gateway -}}
{{- $_ := set $keys "agreement_key" "/etc/casebridge/keys/agreement.key" -}}
{{- $_ := set $keys "agreement_cert" "/etc/casebridge/keys/agreement.pem" -}}
{{- $_ := set $api "token_file" "/etc/casebridge/keys/api-token" -}}
{{- end -}}
{{- $s := dict
  "agency" .agency
  "nats" (dict
    "url" (include "cb.natsUrl" $root)
    "ca_file" "/etc/casebridge/keys/ca.pem"
    "cert_file" "/etc/casebridge/keys/tls-chain.pem"
    "key_file" "/etc/casebridge/keys/tls.key")
  "keys" $keys
  "directory" (dict
    "file" "/etc/casebridge/federation/directory.jws"
    "root_cert" "/etc/casebridge/federation/root.pem")
  "store" .store
  "api" $api
-}}
{{- if .policy -}}
{{- $_ := set $s "policy" (dict "file" "/etc/casebridge/federation/policy.jws" "ca_cert" "/etc/casebridge/federation/country-ca.pem") -}}
{{- end -}}
{{- range $k, $v := .extra -}}
{{- $_ := set $s $k $v -}}
{{- end -}}
{{- toPrettyJson $s -}}
{{- end -}}

{{- define "cb.natsEgress" -}}
- to:
    - podSelector:
        matchLabels:
          {{- include "cb.selector" . | nindent 10 }}
          app.kubernetes.io/component: nats
  ports:
    - {protocol: TCP, port: {{ .Values.generated.nats.clientPort }}}
{{- end -}}

{{- define "cb.dnsEgress" -}}
- to:
    {{- toYaml .Values.networkPolicy.dns | nindent 4 }}
  ports:
    - {protocol: UDP, port: 53}
    - {protocol: TCP, port: 53}
{{- end -}}
