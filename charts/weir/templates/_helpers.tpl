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

{{/* librdkafka settings for the default cluster that are not secret, as the operator's
WEIR_KAFKA_CONFIG; security settings and credentials are separate variables and files. */}}
{{- define "weir.kafkaConfig" -}}
{{- $entries := list -}}
{{- range $k, $v := .Values.kafka.config -}}
{{- $entries = append $entries (printf "%s=%v" $k $v) -}}
{{- end -}}
{{- join "," $entries -}}
{{- end -}}

{{/* The Secrets the operator's Kafka credentials are read from, each mounted as files:
a YAML list of { name, secret, dir }; empty when there are none. */}}
{{- define "weir.kafkaVolumes" -}}
{{- $v := list -}}
{{- with .Values.kafka.sasl.existingSecret -}}
{{- $v = append $v (dict "name" "kafka-sasl" "secret" . "dir" "/etc/weir/kafka-sasl") -}}
{{- end -}}
{{- with .Values.kafka.oauth.existingSecret -}}
{{- $v = append $v (dict "name" "kafka-oauth" "secret" . "dir" "/etc/weir/kafka-oauth") -}}
{{- end -}}
{{- with .Values.kafka.tls.existingSecret -}}
{{- $v = append $v (dict "name" "kafka-tls" "secret" . "dir" "/etc/weir/kafka-tls") -}}
{{- end -}}
{{- with .Values.kafka.tls.clientSecret -}}
{{- $v = append $v (dict "name" "kafka-client" "secret" . "dir" "/etc/weir/kafka-client") -}}
{{- end -}}
{{- if $v -}}{{- toYaml $v -}}{{- end -}}
{{- end -}}
