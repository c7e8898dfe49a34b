# hippo-gitops on Nomad: the controller (`hippo-gitops reconcile` without `--once`, see
# docs/controller.md) as a service job on the same Nomad cluster that Hippo schedules its apps on.
#
# Settings and credentials come from a Nomad Variable, rendered by the `template` blocks below
# (an alternative Vault template is at the end of the task, commented out). Create the variable
# first; the job's workload identity may read it without any policy, because its path is under
# nomad/jobs/<job>:
#
#   nomad var put nomad/jobs/hippo-gitops \
#     hippo_url=https://hippo.example.com \
#     hippo_username=gitops hippo_password='...' \
#     bindle_server_url=https://bindle.example.com/v1 \
#     git_url=https://github.com/org/deploy.git \
#     webhook_secret="$(openssl rand -hex 32)" \
#     bindle_signing_key=@secret_keys.toml
#
# Items (all optional but hippo_url, bindle_server_url and bindle_signing_key):
#   hippo_url, hippo_username + hippo_password or hippo_token,
#   bindle_server_url, bindle_username + bindle_password or bindle_token,
#   bindle_signing_key  the creator key file (`bindle keys create`), trusted by the Bindle server
#   git_url             overrides var.git_url (e.g. https://user:token@host/org/deploy.git)
#   git_ssh_key, git_known_hosts   an SSH deploy key (git@host:org/repo.git URLs)
#   git_credentials     a .git-credentials file (https://user:token@host, one a line)
#   webhook_secret      HIPPO_GITOPS_WEBHOOK_SECRET; without it every webhook gets 403
#   api_token           HIPPO_GITOPS_API_TOKEN: the dashboard's "Reconcile now" and
#                       POST /api/v1/apps/{name}/reconcile; without it both are off (read-only)
#   notify_<NAME>       the environment variable NAME, for the Notification documents in Git
#                       (their addressFromEnv/secretFromEnv), e.g. notify_ALERTS_URL=https://...
#   nomad_token         a classic ACL token, instead of the workload identity (see below)
#
# Nomad access (NOMAD_ADDR, NOMAD_TOKEN). The controller reads Hippo's jobs and allocations,
# holds the leader lock (a Nomad Variable) and, with --prune-orphans, deletes orphaned jobs. By
# default it authenticates with this task's workload identity (`identity { env = true }` puts a
# JWT in NOMAD_TOKEN; Nomad >= 1.7). Grant that identity a policy:
#
#   cat > hippo-gitops.policy.hcl <<'EOF'
#   namespace "default" {                      # Hippo's jobs (var.hippo_nomad_namespace)
#     capabilities = ["list-jobs", "read-job"] # add "submit-job" for --prune-orphans
#     variables {                              # the leader lock and the rollback records
#                                              # (hippo-gitops/delivery), in this namespace
#       path "hippo-gitops/*" { capabilities = ["read", "write", "list"] }   # (var.namespace)
#     }
#   }
#   EOF
#   nomad acl policy apply -namespace default -job hippo-gitops -group controller \
#     -task hippo-gitops hippo-gitops hippo-gitops.policy.hcl
#
# Or put a classic ACL token with that policy in the variable's nomad_token item (it then takes
# precedence over the workload identity's token). Without ACLs, nothing of this is needed.
#
# Run it:
#   nomad job run -var git_url=https://github.com/org/deploy.git -var git_path=deploy-specs \
#     charts/nomad/hippo-gitops.nomad.hcl

variable "image" {
  type        = string
  description = "The controller's image (built from the repository's Dockerfile)."
  default     = "ghcr.io/hippo-gitops/hippo-gitops:0.1.0"
}

variable "datacenters" {
  type        = list(string)
  description = "Datacenters to run in (\"*\": all, Nomad >= 1.6; list them on older versions)."
  default     = ["*"]
}

variable "namespace" {
  type        = string
  description = "Nomad namespace of this job (and of the variable it reads)."
  default     = "default"
}

variable "count" {
  type        = number
  description = <<-EOT
    Controller replicas. More than 1 is safe: they elect one writer through a Nomad Variable lock
    (var.leader_lock; NOMAD_ADDR is always set here), and the followers observe and serve /status
    but never write. 2 gives a standby that takes over within about a minute of a crash.
  EOT
  default     = 1
}

variable "git_url" {
  type        = string
  description = "The repository to follow (HIPPO_GITOPS_GIT_URL); the variable's git_url item overrides it."
  default     = ""
}

variable "git_branch" {
  type    = string
  default = "main"
}

variable "git_path" {
  type        = string
  description = "Deploy files inside the repository (HIPPO_GITOPS_GIT_PATH)."
  default     = "."
}

variable "git_interval" {
  type    = string
  default = "60s"
}

variable "interval" {
  type        = string
  description = "Reconcile everything at least this often (HIPPO_GITOPS_INTERVAL)."
  default     = "60s"
}

variable "external_url" {
  type        = string
  description = "Where users reach the dashboard (HIPPO_GITOPS_EXTERNAL_URL), e.g. https://gitops.example.com: the links in notifications and commit statuses; empty: none."
  default     = ""
}

variable "leader_lock" {
  type        = string
  description = "Nomad variable path of the leader lock (HIPPO_GITOPS_LEADER_LOCK)."
  default     = "hippo-gitops/leader"
}

variable "nomad_addr" {
  type        = string
  description = <<-EOT
    NOMAD_ADDR as the task sees it. The default is the local Nomad agent's HTTP API on the
    node's address ("$${...}" is left for Nomad to interpolate when the task starts). With TLS,
    use https:// and provide NOMAD_CACERT (e.g. from another template).
  EOT
  default     = "http://$${attr.unique.network.ip-address}:4646"
}

variable "hippo_nomad_namespace" {
  type        = string
  description = "HIPPO_GITOPS_HIPPO_NAMESPACE: the namespace of Hippo's jobs (Hippo registers them in default)."
  default     = "default"
}

variable "variable_path" {
  type        = string
  description = "The Nomad Variable with the settings and credentials (nomad/jobs/<job> needs no policy)."
  default     = "nomad/jobs/hippo-gitops"
}

job "hippo-gitops" {
  type        = "service"
  datacenters = var.datacenters
  namespace   = var.namespace

  group "controller" {
    # Leader election makes any count safe; see var.count.
    count = var.count

    network {
      port "http" {
        to = 9090
      }
    }

    # /healthz: the process runs (a failing check restarts the task). /readyz: the first
    # observation of Hippo, Bindle and Nomad is done (leader, follower or single); deployments
    # wait for it.
    service {
      name     = "hippo-gitops"
      port     = "http"
      provider = "nomad"
      tags     = ["metrics", "webhooks"]

      check {
        name     = "healthz"
        type     = "http"
        path     = "/healthz"
        interval = "10s"
        timeout  = "3s"

        check_restart {
          limit = 3
          grace = "30s"
        }
      }

      check {
        name     = "readyz"
        type     = "http"
        path     = "/readyz"
        interval = "10s"
        timeout  = "3s"
      }
    }

    # A task that fails is restarted in place a few times, then the allocation is rescheduled.
    restart {
      attempts = 3
      interval = "5m"
      delay    = "15s"
      mode     = "fail"
    }

    # One allocation at a time; with leader election the new one is a follower until the old one
    # releases the lock on shutdown, so the overlap never has two writers.
    update {
      max_parallel      = 1
      health_check      = "checks"
      min_healthy_time  = "10s"
      healthy_deadline  = "5m"
      progress_deadline = "10m"
      auto_revert       = true
    }

    # The Git clone and the last applied commit survive a task restart and, best effort, an update.
    ephemeral_disk {
      size    = 1024
      sticky  = true
      migrate = true
    }

    task "hippo-gitops" {
      driver = "docker"

      config {
        image           = var.image
        ports           = ["http"]
        args            = ["reconcile", "--listen", "0.0.0.0:9090", "--log-format", "json"]
        readonly_rootfs = true
        cap_drop        = ["all"]
        security_opt    = ["no-new-privileges"]
      }

      # The image's non-root user.
      user = "10001:10001"

      # Puts a workload identity token in NOMAD_TOKEN (see the policy at the top).
      identity {
        env = true
      }

      # Between SIGTERM and SIGKILL: above --shutdown-grace (30s), so in-flight writes finish and
      # the leader lock is released.
      kill_signal  = "SIGTERM"
      kill_timeout = "45s"

      env {
        HIPPO_GITOPS_STATE_DIR       = "${NOMAD_ALLOC_DIR}/data/hippo-gitops"
        HOME                         = "${NOMAD_ALLOC_DIR}/data"
        TMPDIR                       = "${NOMAD_TASK_DIR}"
        HIPPO_GITOPS_GIT_BRANCH      = var.git_branch
        HIPPO_GITOPS_GIT_PATH        = var.git_path
        HIPPO_GITOPS_GIT_INTERVAL    = var.git_interval
        HIPPO_GITOPS_INTERVAL        = var.interval
        HIPPO_GITOPS_LEADER_LOCK     = var.leader_lock
        HIPPO_GITOPS_EXTERNAL_URL    = var.external_url
        NOMAD_ADDR                   = var.nomad_addr
        # NOMAD_NAMESPACE, where the leader lock lives, is the job's own: Nomad sets it.
        HIPPO_GITOPS_HIPPO_NAMESPACE = var.hippo_nomad_namespace
        BINDLE_SIGNING_KEY           = "${NOMAD_SECRETS_DIR}/bindle-signing-key.toml"
      }

      # Settings and credentials from the Nomad Variable, as environment variables (values are
      # JSON-quoted: the env file format accepts JSON strings, so any character is safe). An item
      # that is not set leaves its variable out. The task waits until the variable exists;
      # changing it restarts the task.
      template {
        destination = "${NOMAD_SECRETS_DIR}/hippo-gitops.env"
        env         = true
        change_mode = "restart"
        data        = <<-EOT
          {{ with nomadVar "${var.variable_path}" -}}
          {{ with .hippo_url }}HIPPO_URL={{ .Value | toJSON }}{{ end }}
          {{ with .hippo_username }}HIPPO_USERNAME={{ .Value | toJSON }}{{ end }}
          {{ with .hippo_password }}HIPPO_PASSWORD={{ .Value | toJSON }}{{ end }}
          {{ with .hippo_token }}HIPPO_TOKEN={{ .Value | toJSON }}{{ end }}
          {{ with .bindle_server_url }}BINDLE_SERVER_URL={{ .Value | toJSON }}{{ end }}
          {{ with .bindle_username }}BINDLE_USERNAME={{ .Value | toJSON }}{{ end }}
          {{ with .bindle_password }}BINDLE_PASSWORD={{ .Value | toJSON }}{{ end }}
          {{ with .bindle_token }}BINDLE_TOKEN={{ .Value | toJSON }}{{ end }}
          HIPPO_GITOPS_GIT_URL={{ with .git_url }}{{ .Value | toJSON }}{{ else }}${jsonencode(var.git_url)}{{ end }}
          {{ with .webhook_secret }}HIPPO_GITOPS_WEBHOOK_SECRET={{ .Value | toJSON }}{{ end }}
          {{ with .api_token }}HIPPO_GITOPS_API_TOKEN={{ .Value | toJSON }}{{ end }}
          {{ range $k, $v := . }}{{ if $k | regexMatch "^notify_[A-Za-z_][A-Za-z0-9_]*$" }}{{ $k | regexReplaceAll "^notify_" "" }}={{ $v.Value | toJSON }}
          {{ end }}{{ end }}
          {{ with .nomad_token }}NOMAD_TOKEN={{ .Value | toJSON }}{{ end }}
          {{ with .git_ssh_key }}GIT_SSH_COMMAND="ssh -i {{ env "NOMAD_SECRETS_DIR" }}/git-ssh-key -o IdentitiesOnly=yes -o UserKnownHostsFile={{ env "NOMAD_SECRETS_DIR" }}/git-known-hosts -o StrictHostKeyChecking=yes"{{ end }}
          {{ with .git_credentials }}GIT_CONFIG_COUNT=1
          GIT_CONFIG_KEY_0=credential.helper
          GIT_CONFIG_VALUE_0='!f() { test "$1" = get && exec git credential-store --file={{ env "NOMAD_SECRETS_DIR" }}/git-credentials get; }; f'{{ end }}
          {{- end }}
        EOT
      }

      # Files: the signing key and the Git credentials, readable by the task's user only.
      template {
        destination = "${NOMAD_SECRETS_DIR}/bindle-signing-key.toml"
        perms       = "0400"
        uid         = 10001
        gid         = 10001
        change_mode = "restart"
        data        = <<-EOT
          {{ with nomadVar "${var.variable_path}" }}{{ with .bindle_signing_key }}{{ .Value }}{{ end }}{{ end }}
        EOT
      }

      template {
        destination = "${NOMAD_SECRETS_DIR}/git-ssh-key"
        perms       = "0400"
        uid         = 10001
        gid         = 10001
        change_mode = "restart"
        data        = <<-EOT
          {{ with nomadVar "${var.variable_path}" }}{{ with .git_ssh_key }}{{ .Value }}{{ end }}{{ end }}
        EOT
      }

      template {
        destination = "${NOMAD_SECRETS_DIR}/git-known-hosts"
        perms       = "0400"
        uid         = 10001
        gid         = 10001
        change_mode = "restart"
        data        = <<-EOT
          {{ with nomadVar "${var.variable_path}" }}{{ with .git_known_hosts }}{{ .Value }}{{ end }}{{ end }}
        EOT
      }

      template {
        destination = "${NOMAD_SECRETS_DIR}/git-credentials"
        perms       = "0400"
        uid         = 10001
        gid         = 10001
        change_mode = "restart"
        data        = <<-EOT
          {{ with nomadVar "${var.variable_path}" }}{{ with .git_credentials }}{{ .Value }}{{ end }}{{ end }}
        EOT
      }

      # The alternative: the same settings from Vault (KV v2 at secret/data/hippo-gitops) instead
      # of the Nomad Variable. Replace the env template above with this one (and the files'
      # `nomadVar` with `secret`, `.x` with `.Data.data.x`), and give the task a Vault role:
      #
      # vault {
      #   role = "hippo-gitops"        # Nomad >= 1.7 workload identity for Vault
      # }
      #
      # template {
      #   destination = "${NOMAD_SECRETS_DIR}/hippo-gitops.env"
      #   env         = true
      #   change_mode = "restart"
      #   data        = <<-EOT
      #     {{ with secret "secret/data/hippo-gitops" -}}
      #     HIPPO_URL={{ .Data.data.hippo_url | toJSON }}
      #     HIPPO_USERNAME={{ .Data.data.hippo_username | toJSON }}
      #     HIPPO_PASSWORD={{ .Data.data.hippo_password | toJSON }}
      #     BINDLE_SERVER_URL={{ .Data.data.bindle_server_url | toJSON }}
      #     {{ with .Data.data.webhook_secret }}HIPPO_GITOPS_WEBHOOK_SECRET={{ . | toJSON }}{{ end }}
      #     {{- end }}
      #   EOT
      # }

      resources {
        cpu    = 100 # MHz
        memory = 128 # MB
        # memory_max = 512   # with memory oversubscription enabled: room for large bindle pushes
      }
    }
  }
}
