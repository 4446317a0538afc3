{{/* The name of the operator's objects: "<release>-operator", at most 63 characters. */}}
{{- define "weir.fullname" -}}
{{- printf "%s-operator" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "weir.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "weir.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The labels that select the operator's pods: never change them in an upgrade. */}}
{{- define "weir.selectorLabels" -}}
app.kubernetes.io/name: weir
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{/* Every object's labels, per Helm's and Kubernetes' recommended labels. */}}
{{- define "weir.labels" -}}
{{ include "weir.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: weir
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end -}}

{{/* Weir's image, "repository:tag" (the tag defaults to the chart's appVersion). */}}
{{- define "weir.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{/* The workers' image: workerImage, or Weir's image. */}}
{{- define "weir.workerImage" -}}
{{- if .Values.workerImage.repository -}}
{{- printf "%s:%s" .Values.workerImage.repository (.Values.workerImage.tag | default .Chart.AppVersion) -}}
{{- else -}}
{{- include "weir.image" . -}}
{{- end -}}
{{- end -}}

{{/* librdkafka settings for the default cluster, as the operator's WEIR_KAFKA_CONFIG. */}}
{{- define "weir.kafkaConfig" -}}
{{- $entries := list -}}
{{- range $k, $v := .Values.kafka.config -}}
{{- $entries = append $entries (printf "%s=%v" $k $v) -}}
{{- end -}}
{{- if .Values.kafka.sasl.existingSecret -}}
{{- $entries = append $entries "sasl.username=$(WEIR_KAFKA_SASL_USERNAME)" -}}
{{- $entries = append $entries "sasl.password=$(WEIR_KAFKA_SASL_PASSWORD)" -}}
{{- end -}}
{{- if .Values.kafka.tls.existingSecret -}}
{{- $entries = append $entries (printf "ssl.ca.location=/etc/weir/kafka-tls/%s" .Values.kafka.tls.caKey) -}}
{{- end -}}
{{- join "," $entries -}}
{{- end -}}
