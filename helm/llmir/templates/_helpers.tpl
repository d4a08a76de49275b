{{/* Object names: <release>-<component>, or llmir-<component> style when the release is named llmir. */}}
{{- define "llmir.fullname" -}}
{{- if contains "llmir" .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-llmir" .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "llmir.labels" -}}
app.kubernetes.io/name: llmir
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: llmir
{{- end -}}

{{/* Selector of one component's pods: include with (list $ "scheduler"). */}}
{{- define "llmir.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: llmir
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "llmir.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag }}
{{- end -}}

{{- define "llmir.workerImage" -}}
{{ .Values.worker.image.repository | default .Values.image.repository }}:{{ .Values.worker.image.tag | default .Values.image.tag }}
{{- end -}}

{{- define "llmir.apiKeySecret" -}}
{{- if .Values.apiKey.existingSecret -}}
{{ .Values.apiKey.existingSecret }}
{{- else if .Values.apiKey.value -}}
{{ include "llmir.fullname" . }}-api-key
{{- end -}}
{{- end -}}

{{/* Pod-level settings every Deployment shares: include with (list $ .Values.<component>). */}}
{{- define "llmir.podPlacement" -}}
{{- $root := index . 0 -}}
{{- $c := index . 1 -}}
{{- with $root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml $root.Values.podSecurityContext | nindent 2 }}
{{- with $c.priorityClassName }}
priorityClassName: {{ . }}
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
{{- end -}}

{{/* Each service's config.yaml: the keys the chart owns, then the user's extra keys over them. */}}
{{- define "llmir.compilerConfig" -}}
{{- $cfg := dict "http" (dict "host" "0.0.0.0" "port" (int .Values.compiler.port) "threads" (int .Values.compiler.threads)) "log" (dict "level" .Values.logLevel) -}}
{{- toYaml (mustMergeOverwrite $cfg (deepCopy .Values.compiler.config)) -}}
{{- end -}}

{{- define "llmir.schedulerConfig" -}}
{{- $name := include "llmir.fullname" . -}}
{{- $cfg := dict
      "model" (printf "%s/%s" .Values.models.mountPath .Values.models.path)
      "compiler-url" (printf "http://%s-compiler:%d" $name (int .Values.compiler.port))
      "http" (dict "host" "0.0.0.0" "port" (int .Values.scheduler.httpPort))
      "worker-host" "0.0.0.0"
      "worker-port" (int .Values.scheduler.workerPort)
      "store-host" (printf "%s-scheduler-workers" $name)
      "store-port" (int .Values.scheduler.storePort)
      "tp" (int .Values.scheduler.tp)
      "pp" (int .Values.scheduler.pp)
      "drain-grace-ms" (mul (max 1 (sub (int .Values.worker.drainGraceSeconds) 5)) 1000)
      "limits" (dict "max-concurrent-requests-per-key" (int .Values.scheduler.limits.maxConcurrentRequestsPerKey)
                     "concurrency-retry-after-s" (int .Values.scheduler.limits.concurrencyRetryAfterSeconds))
      "log" (dict "level" .Values.logLevel) -}}
{{- /* drain-grace-ms: the scheduler moves a draining replica's sequences 5 s before the worker's own grace ends. */ -}}
{{- with .Values.scheduler.servedModelName }}
{{- $_ := set $cfg "served-model-name" . -}}
{{- end }}
{{- if .Values.apiKeysFile.existingSecret }}
{{- $_ := set $cfg "api-keys-file" (include "llmir.apiKeysFilePath" .) -}}
{{- end }}
{{- if .Values.kvStore.enabled }}
{{- $_ := set $cfg "kv-store" (dict "host" (printf "%s-kv-store" $name)
                                    "port" (int .Values.kvStore.ucxPort)
                                    "timeout-ms" (int .Values.kvStore.timeoutMs)) -}}
{{- end }}
{{- toYaml (mustMergeOverwrite $cfg (deepCopy .Values.scheduler.config)) -}}
{{- end -}}

{{- define "llmir.kv-storeConfig" -}}
{{- $cfg := dict
      "ucx" (dict "host" "0.0.0.0" "port" (int .Values.kvStore.ucxPort))
      "http" (dict "host" "0.0.0.0" "port" (int .Values.kvStore.httpPort))
      "store" (dict "capacity-bytes" (int64 .Values.kvStore.capacityBytes)
                    "max-block-bytes" (int64 .Values.kvStore.maxBlockBytes))
      "log" (dict "level" .Values.logLevel) -}}
{{- toYaml (mustMergeOverwrite $cfg (deepCopy .Values.kvStore.config)) -}}
{{- end -}}

{{- define "llmir.workerConfig" -}}
{{- $name := include "llmir.fullname" . -}}
{{- $cfg := dict
      "scheduler" (dict "host" (printf "%s-scheduler-workers" $name) "port" (int .Values.scheduler.workerPort))
      "worker" (dict "device" .Values.worker.device "threads" (int .Values.worker.threads))
      "http" (dict "host" "0.0.0.0" "port" (int .Values.worker.metricsPort))
      "timeouts" (dict "connect-ms" (int .Values.worker.timeouts.connectMs)
                       "heartbeat-ms" (int .Values.worker.timeouts.heartbeatMs)
                       "collective-ms" (int .Values.worker.timeouts.collectiveMs)
                       "drain-grace-ms" (mul .Values.worker.drainGraceSeconds 1000))
      "log" (dict "level" .Values.logLevel) -}}
{{- toYaml (mustMergeOverwrite $cfg (deepCopy .Values.worker.config)) -}}
{{- end -}}

{{/* Where the scheduler reads apiKeysFile's Secret (its own volume: a mount
inside the read-only ConfigMap volume at /etc/llmir could not be created). */}}
{{- define "llmir.apiKeysFileDir" -}}
/etc/llmir-api-keys
{{- end -}}
{{- define "llmir.apiKeysFilePath" -}}
{{ include "llmir.apiKeysFileDir" . }}/api-keys
{{- end -}}

{{/* The cluster secret as an environment entry (when clusterSecret.existingSecret is set). */}}
{{- define "llmir.clusterSecretEnv" -}}
- name: LLMIR_CLUSTER_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ .Values.clusterSecret.existingSecret }}
      key: {{ .Values.clusterSecret.secretKey }}
{{- end -}}
