{{/*
The chart's name, or nameOverride.
*/}}
{{- define "hippo-gitops.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name of the release's objects: fullnameOverride, else RELEASE-NAME (RELEASE when it
already contains the chart's name), cut to the 63 characters of a DNS label.
*/}}
{{- define "hippo-gitops.fullname" -}}
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

{{/*
chart: NAME-VERSION, for the helm.sh/chart label.
*/}}
{{- define "hippo-gitops.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels of every object.
*/}}
{{- define "hippo-gitops.labels" -}}
helm.sh/chart: {{ include "hippo-gitops.chart" . }}
{{ include "hippo-gitops.selectorLabels" . }}
app.kubernetes.io/version: {{ (default .Chart.AppVersion .Values.image.tag) | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: controller
{{- end }}

{{/*
Labels that select the controller's pods (never change them: a Deployment's selector is immutable).
*/}}
{{- define "hippo-gitops.selectorLabels" -}}
app.kubernetes.io/name: {{ include "hippo-gitops.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
The ServiceAccount the pods run as.
*/}}
{{- define "hippo-gitops.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "hippo-gitops.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The image: repository@digest when a digest is given, else repository:tag (tag defaults to the
chart's appVersion).
*/}}
{{- define "hippo-gitops.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
The Secret with the connection settings and credentials: the chart's own with
credentials.createSecret, else credentials.existingSecret.
*/}}
{{- define "hippo-gitops.credentialsSecretName" -}}
{{- if .Values.credentials.createSecret }}
{{- include "hippo-gitops.fullname" . }}
{{- else }}
{{- required "credentials.existingSecret: name the Secret with HIPPO_URL, BINDLE_SERVER_URL and the credentials (see values.yaml)" .Values.credentials.existingSecret }}
{{- end }}
{{- end }}

{{/*
The Secret holding the bindle signing key file.
*/}}
{{- define "hippo-gitops.signingKeySecretName" -}}
{{- default (include "hippo-gitops.credentialsSecretName" .) .Values.bindle.signingKey.existingSecret }}
{{- end }}

{{/*
The Secret holding the webhook secret.
*/}}
{{- define "hippo-gitops.webhookSecretName" -}}
{{- default (include "hippo-gitops.credentialsSecretName" .) .Values.webhook.existingSecret }}
{{- end }}

{{/*
One environment variable from a Secret's key; nothing when the key is "".
Call with (list NAME SECRET KEY OPTIONAL).
*/}}
{{- define "hippo-gitops.secretEnv" -}}
{{- $name := index . 0 -}}
{{- $secret := index . 1 -}}
{{- $key := index . 2 -}}
{{- $optional := index . 3 -}}
{{- if $key -}}
- name: {{ $name }}
  valueFrom:
    secretKeyRef:
      name: {{ $secret | quote }}
      key: {{ $key | quote }}
      optional: {{ $optional }}
{{- end -}}
{{- end }}
