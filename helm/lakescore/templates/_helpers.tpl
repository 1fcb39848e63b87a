{{/* vim: set filetype=mustache: */}}

{{- define "lakescore.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Resource name prefix; leaves room for the "-scorer-headless" suffix. */}}
{{- define "lakescore.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 47 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 47 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 47 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "lakescore.registry.fullname" -}}
{{- printf "%s-registry" (include "lakescore.fullname" .) -}}
{{- end -}}

{{- define "lakescore.scorer.fullname" -}}
{{- printf "%s-scorer" (include "lakescore.fullname" .) -}}
{{- end -}}

{{- define "lakescore.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "lakescore.selectorLabels" -}}
app.kubernetes.io/name: {{ include "lakescore.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "lakescore.labels" -}}
helm.sh/chart: {{ include "lakescore.chart" . }}
{{ include "lakescore.selectorLabels" . }}
app.kubernetes.io/version: {{ (default .Chart.AppVersion .Values.image.tag) | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: lakescore
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Labels of one component: (dict "ctx" $ "component" "registry") */}}
{{- define "lakescore.componentLabels" -}}
{{ include "lakescore.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "lakescore.componentSelectorLabels" -}}
{{ include "lakescore.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "lakescore.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "lakescore.configMapName" -}}
{{- printf "%s-config" (include "lakescore.fullname" .) -}}
{{- end -}}

{{/* ServiceAccount name of a component: (dict "ctx" $ "component" "registry") */}}
{{- define "lakescore.serviceAccountName" -}}
{{- $c := index .ctx.Values .component -}}
{{- if $c.serviceAccount.create -}}
{{- default (printf "%s-%s" (include "lakescore.fullname" .ctx) .component) $c.serviceAccount.name -}}
{{- else -}}
{{- default "default" $c.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* host:port for a listen address; IPv6 addresses get brackets. */}}
{{- define "lakescore.listen" -}}
{{- if contains ":" .addr -}}
{{- printf "[%s]:%d" .addr (int .port) -}}
{{- else -}}
{{- printf "%s:%d" .addr (int .port) -}}
{{- end -}}
{{- end -}}

{{/* The registry URL the workers resolve models from. */}}
{{- define "lakescore.registryUrl" -}}
{{- if .Values.scorer.registryUrl -}}
{{- .Values.scorer.registryUrl -}}
{{- else -}}
{{- printf "%s://%s.%s.svc:%d" .Values.scorer.registryProtocol (include "lakescore.registry.fullname" .) .Release.Namespace (int .Values.registry.service.port) -}}
{{- end -}}
{{- end -}}

{{/* "true" when OIDC is configured, inline or from a Secret. */}}
{{- define "lakescore.oidcEnabled" -}}
{{- if .Values.auth.oidc.enabled -}}true{{- end -}}
{{- end -}}

{{/*
Guards: refuse configurations that cannot work or that would be unsafe.
Included by the ConfigMap, so every render runs them.
*/}}
{{- define "lakescore.validate" -}}
{{- $oidc := .Values.auth.oidc -}}
{{- if $oidc.enabled -}}
  {{- if not $oidc.existingSecret -}}
    {{- if not $oidc.issuer -}}
      {{- fail "auth.oidc.enabled: set auth.oidc.issuer (or auth.oidc.existingSecret)" -}}
    {{- end -}}
    {{- if not $oidc.audiences -}}
      {{- fail "auth.oidc.enabled: set auth.oidc.audiences (at least one, e.g. api://lakescore), or auth.oidc.existingSecret" -}}
    {{- end -}}
  {{- end -}}
  {{- $templated := false -}}
  {{- range (concat (list $oidc.issuer) $oidc.additionalIssuers) -}}
    {{- if contains "{tenantid}" . -}}{{- $templated = true -}}{{- end -}}
  {{- end -}}
  {{- if and $templated (not $oidc.allowedTenants) (not $oidc.existingSecret) -}}
    {{- fail "auth.oidc: a {tenantid} issuer needs auth.oidc.allowedTenants (use [\"*\"] to accept any tenant)" -}}
  {{- end -}}
{{- else -}}
  {{- if not .Values.auth.insecureNoAuth -}}
    {{- fail "authentication: enable auth.oidc (production), or set auth.insecureNoAuth=true to run WITHOUT authentication (development only)" -}}
  {{- end -}}
  {{- if .Values.ingress.enabled -}}
    {{- fail "ingress.enabled: refusing to expose a registry without authentication; configure auth.oidc" -}}
  {{- end -}}
  {{- if has .Values.registry.service.type (list "LoadBalancer" "NodePort") -}}
    {{- fail "registry.service.type: refusing a LoadBalancer/NodePort Service without authentication; configure auth.oidc" -}}
  {{- end -}}
  {{- if and .Values.scorer.enabled (has .Values.scorer.service.type (list "LoadBalancer" "NodePort")) -}}
    {{- fail "scorer.service.type: refusing a LoadBalancer/NodePort Service without authentication; configure auth.oidc" -}}
  {{- end -}}
{{- end -}}
{{- if gt (int .Values.registry.replicas) 1 -}}
  {{- if not .Values.registry.database.existingSecret -}}
    {{- fail "registry.replicas > 1 needs PostgreSQL: set registry.database.existingSecret (SQLite cannot be shared between pods)" -}}
  {{- end -}}
  {{- if or (not .Values.registry.storage.url) (hasPrefix "file:" .Values.registry.storage.url) -}}
    {{- fail "registry.replicas > 1 needs object storage: set registry.storage.url (s3://, az://, gs://); local files cannot be shared between pods" -}}
  {{- end -}}
{{- end -}}
{{- if and .Values.registry.persistence.enabled (gt (int .Values.registry.replicas) 1) (not (has "ReadWriteMany" .Values.registry.persistence.accessModes)) -}}
  {{- fail "registry.persistence: one ReadWriteOnce volume cannot serve several registry replicas; disable persistence (PostgreSQL + object storage need none) or use ReadWriteMany" -}}
{{- end -}}
{{- if and .Values.scorer.enabled .Values.scorer.autoscaling.enabled -}}
  {{- if gt (int .Values.scorer.autoscaling.minReplicas) (int .Values.scorer.autoscaling.maxReplicas) -}}
    {{- fail "scorer.autoscaling: minReplicas must not exceed maxReplicas" -}}
  {{- end -}}
  {{- if and (kindIs "invalid" .Values.scorer.autoscaling.targetCPUUtilizationPercentage) (kindIs "invalid" .Values.scorer.autoscaling.targetMemoryUtilizationPercentage) -}}
    {{- fail "scorer.autoscaling: set targetCPUUtilizationPercentage and/or targetMemoryUtilizationPercentage" -}}
  {{- end -}}
{{- end -}}
{{- end -}}

{{/* A TOML key = value line, only when the value is set (not null / empty). */}}
{{- define "lakescore.toml.int" -}}
{{- if not (kindIs "invalid" .value) }}
{{ .key }} = {{ int64 .value }}
{{- end -}}
{{- end -}}

{{- define "lakescore.toml.string" -}}
{{- if .value }}
{{ .key }} = {{ toJson (toString .value) }}
{{- end -}}
{{- end -}}

{{- define "lakescore.toml.list" -}}
{{- if .value }}
{{ .key }} = [{{ range $i, $v := .value }}{{ if $i }}, {{ end }}{{ toJson (toString $v) }}{{ end }}]
{{- end -}}
{{- end -}}

{{- define "lakescore.toml.map" -}}
{{- if .value }}
{{ .key }} = {{ "{" }}{{ range $i, $k := (keys .value | sortAlpha) }}{{ if $i }},{{ end }} {{ toJson $k }} = {{ toJson (toString (index $.value $k)) }}{{ end }} {{ "}" }}
{{- end -}}
{{- end -}}

{{/*
The configuration file (TOML) both components read through LAKESCORE_CONFIG.
No secret goes here: the database URL and credentials come from Secrets as env vars.
*/}}
{{- define "lakescore.toml" -}}
{{- $r := .Values.registry -}}
{{- $s := .Values.scorer -}}
{{- $a := .Values.auth -}}
# lakescore configuration, written by the Helm chart {{ include "lakescore.chart" . }}.
# Secrets are NOT in this file: LAKESCORE_DATABASE_URL and storage credentials come from
# Kubernetes Secrets as environment variables, which override this file.
insecure_no_auth = {{ and (not $a.oidc.enabled) $a.insecureNoAuth }}

[registry]
listen = {{ include "lakescore.listen" (dict "addr" .Values.bindAddress "port" $r.containerPort) | quote }}
data_dir = "/var/lib/lakescore"
{{- include "lakescore.toml.string" (dict "key" "storage_url" "value" $r.storage.url) }}
{{- include "lakescore.toml.map" (dict "key" "storage_options" "value" $r.storage.options) }}
{{- include "lakescore.toml.int" (dict "key" "max_upload_bytes" "value" $r.config.maxUploadBytes) }}
{{- include "lakescore.toml.list" (dict "key" "allowed_op_domains" "value" $r.config.allowedOpDomains) }}
{{- include "lakescore.toml.int" (dict "key" "db_max_connections" "value" $r.config.dbMaxConnections) }}
{{- include "lakescore.toml.int" (dict "key" "storage_retry_timeout_secs" "value" $r.config.storageRetryTimeoutSecs) }}
{{- include "lakescore.toml.int" (dict "key" "storage_max_retries" "value" $r.config.storageMaxRetries) }}

[scorer]
listen = {{ include "lakescore.listen" (dict "addr" .Values.bindAddress "port" $s.containerPort) | quote }}
model_source = {{ include "lakescore.registryUrl" . | quote }}
intra_op_threads = {{ int64 $s.intraOpThreads }}
backend = {{ $s.backend | quote }}
{{- include "lakescore.toml.string" (dict "key" "advertise_location" "value" $s.advertiseLocation) }}
{{- include "lakescore.toml.list" (dict "key" "storage_roots" "value" $s.storage.roots) }}
{{- include "lakescore.toml.map" (dict "key" "storage_options" "value" $s.storage.options) }}
{{- include "lakescore.toml.string" (dict "key" "graph_optimization" "value" $s.config.graphOptimization) }}
{{- include "lakescore.toml.int" (dict "key" "model_cache_bytes" "value" $s.config.modelCacheBytes) }}
{{- include "lakescore.toml.int" (dict "key" "max_inference_bytes" "value" $s.config.maxInferenceBytes) }}
{{- include "lakescore.toml.int" (dict "key" "inference_batch_rows" "value" $s.config.inferenceBatchRows) }}
{{- include "lakescore.toml.int" (dict "key" "max_batch_rows" "value" $s.config.maxBatchRows) }}
{{- include "lakescore.toml.int" (dict "key" "max_batch_bytes" "value" $s.config.maxBatchBytes) }}
{{- include "lakescore.toml.int" (dict "key" "max_message_bytes" "value" $s.config.maxMessageBytes) }}
{{- include "lakescore.toml.int" (dict "key" "max_rows_per_file" "value" $s.config.maxRowsPerFile) }}
{{- include "lakescore.toml.int" (dict "key" "row_group_rows" "value" $s.config.rowGroupRows) }}
{{- include "lakescore.toml.int" (dict "key" "registry_timeout" "value" $s.config.registryTimeoutSecs) }}
{{- include "lakescore.toml.int" (dict "key" "max_artifact_bytes" "value" $s.config.maxArtifactBytes) }}
{{- if $a.oidc.enabled }}

[auth.oidc]
{{- include "lakescore.toml.string" (dict "key" "issuer" "value" $a.oidc.issuer) }}
{{- include "lakescore.toml.list" (dict "key" "additional_issuers" "value" $a.oidc.additionalIssuers) }}
{{- include "lakescore.toml.list" (dict "key" "allowed_tenants" "value" $a.oidc.allowedTenants) }}
{{- include "lakescore.toml.list" (dict "key" "audiences" "value" $a.oidc.audiences) }}
{{- include "lakescore.toml.string" (dict "key" "discovery_url" "value" $a.oidc.discoveryUrl) }}
{{- include "lakescore.toml.string" (dict "key" "jwks_url" "value" $a.oidc.jwksUrl) }}
{{- include "lakescore.toml.int" (dict "key" "clock_skew_secs" "value" $a.oidc.clockSkewSecs) }}
{{- include "lakescore.toml.int" (dict "key" "jwks_refresh_cooldown_secs" "value" $a.oidc.jwksRefreshCooldownSecs) }}
{{- include "lakescore.toml.int" (dict "key" "jwks_max_age_secs" "value" $a.oidc.jwksMaxAgeSecs) }}
{{- include "lakescore.toml.int" (dict "key" "http_timeout_secs" "value" $a.oidc.httpTimeoutSecs) }}
{{- end }}
{{- with $a.claims }}
{{- if or .subject .roles .groups .scopes .appId }}

[auth.claims]
{{- include "lakescore.toml.list" (dict "key" "subject" "value" .subject) }}
{{- include "lakescore.toml.string" (dict "key" "roles" "value" .roles) }}
{{- include "lakescore.toml.string" (dict "key" "groups" "value" .groups) }}
{{- include "lakescore.toml.string" (dict "key" "scopes" "value" .scopes) }}
{{- include "lakescore.toml.list" (dict "key" "app_id" "value" .appId) }}
{{- end }}
{{- end }}
{{- with $a.roles }}
{{- if or .reader .writer .admin }}

[auth.roles]
{{- include "lakescore.toml.list" (dict "key" "reader" "value" .reader) }}
{{- include "lakescore.toml.list" (dict "key" "writer" "value" .writer) }}
{{- include "lakescore.toml.list" (dict "key" "admin" "value" .admin) }}
{{- end }}
{{- end }}
{{ end -}}

{{/* Environment shared by both components: (dict "ctx" $ "component" "registry") */}}
{{- define "lakescore.env" -}}
{{- $ := .ctx -}}
{{- $c := index $.Values .component -}}
- name: LAKESCORE_CONFIG
  value: /etc/lakescore/lakescore.toml
- name: LAKESCORE_LOG_FORMAT
  value: {{ $.Values.logFormat | quote }}
- name: LAKESCORE_LOG
  value: {{ $.Values.logLevel | quote }}
{{- /* Drain on SIGTERM within what the pod's grace period leaves after preStop, minus a
       5 s margin: past it, scoring jobs are cancelled cleanly before Kubernetes kills. */}}
- name: LAKESCORE_SHUTDOWN_GRACE_SECS
  value: {{ max 1 (sub (sub (int $c.terminationGracePeriodSeconds) (int $c.preStopSleepSeconds)) 5) | quote }}
{{- with $.Values.auth.oidc }}
{{- if and .enabled .existingSecret }}
- name: LAKESCORE_OIDC_ISSUER
  valueFrom:
    secretKeyRef:
      name: {{ .existingSecret | quote }}
      key: {{ .secretKeys.issuer | quote }}
- name: LAKESCORE_OIDC_AUDIENCES
  valueFrom:
    secretKeyRef:
      name: {{ .existingSecret | quote }}
      key: {{ .secretKeys.audiences | quote }}
- name: LAKESCORE_OIDC_ALLOWED_TENANTS
  valueFrom:
    secretKeyRef:
      name: {{ .existingSecret | quote }}
      key: {{ .secretKeys.allowedTenants | quote }}
      optional: true
{{- end }}
{{- end }}
{{- range $c.secretEnv }}
- name: {{ .name | quote }}
  valueFrom:
    secretKeyRef:
      name: {{ .secretName | quote }}
      key: {{ .key | quote }}
      {{- if hasKey . "optional" }}
      optional: {{ .optional }}
      {{- end }}
{{- end }}
{{- with $c.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Pod-level settings shared by both components: (dict "ctx" $ "component" "registry") */}}
{{- define "lakescore.podSpecCommon" -}}
{{- $component := .component -}}
{{- $ := .ctx -}}
{{- $c := index $.Values .component -}}
serviceAccountName: {{ include "lakescore.serviceAccountName" . }}
automountServiceAccountToken: {{ $c.serviceAccount.automountToken }}
enableServiceLinks: false
{{- with $.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml $.Values.podSecurityContext | nindent 2 }}
terminationGracePeriodSeconds: {{ $c.terminationGracePeriodSeconds }}
{{- with $c.priorityClassName }}
priorityClassName: {{ . | quote }}
{{- end }}
{{- with $c.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $c.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $c.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $c.topologySpreadConstraints }}
{{- $selector := dict "matchLabels" (include "lakescore.componentSelectorLabels" (dict "ctx" $ "component" $component) | fromYaml) }}
topologySpreadConstraints:
{{- range . }}
  {{- $tsc := deepCopy . }}
  {{- if not (hasKey $tsc "labelSelector") }}
  {{- $_ := set $tsc "labelSelector" $selector }}
  {{- end }}
  - {{ toYaml $tsc | indent 4 | trim }}
{{- end }}
{{- end }}
{{- end -}}

{{- define "lakescore.preStop" -}}
{{- if gt (int .) 0 -}}
lifecycle:
  preStop:
    sleep:
      seconds: {{ int . }}
{{- end }}
{{- end -}}

{{/* Egress rule allowing DNS (kube-dns / CoreDNS). */}}
{{- define "lakescore.egressDNS" -}}
# DNS
- to:
    - namespaceSelector: {}
      podSelector:
        matchLabels:
          k8s-app: kube-dns
  ports:
    - port: 53
      protocol: UDP
    - port: 53
      protocol: TCP
{{- end -}}
