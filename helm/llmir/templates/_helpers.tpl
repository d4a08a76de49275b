{{- define "llmir.fullname" -}}
{{- printf "%s-llmir" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "llmir.labels" -}}
app.kubernetes.io/name: llmir
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{- define "llmir.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag }}
{{- end -}}
