#!/usr/bin/env bash
# `make lint`: the linters of this course's field, over every file of their kind that git tracks
# (found by name, so a new lesson's Dockerfile or script is linted without being listed here).
#   ruff        Python: `ruff check` and `ruff format --check` (configured in pyproject.toml)
#   hadolint    every Dockerfile (rules it ignores are named, with a reason, in the Dockerfile)
#   ShellCheck  every shell script: *.sh, and files whose first line runs bash or sh
#   actionlint  the GitHub Actions workflows in .github/workflows/
#   pymarkdown  the course's pages: README.md, CONTRIBUTING.md, research-agent/README.md, docs/*.md
#               (rules chosen in .pymarkdown.json; links, anchors and split tables are checked by
#               scripts/docs_links.py in `make test`)
#   config checks  trivy config and checkov over every Dockerfile and Kubernetes manifest,
#               compose-lint over every Compose file: a HIGH or CRITICAL finding fails
#               (scripts/config_checks.py says how, and where a finding kept on purpose says why)
# Usage: scripts/lint.sh [BIN_DIR]   (BIN_DIR holds the linters and their Python; default .venv/bin)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-.venv/bin}
failed=()

run() {
  local name=$1
  shift
  echo "==> $name"
  "$@" || failed+=("$name")
}

mapfile -t dockerfiles < <(git ls-files '*Dockerfile*' | grep -v '\.dockerignore$')
mapfile -t shell_scripts < <(
  git ls-files | while read -r f; do
    [ -f "$f" ] || continue
    case $f in
      *.sh) echo "$f" ;;
      *.*) ;;
      *) head -n1 "$f" | grep -qE '^#!.*\b(ba|da)?sh\b' && echo "$f" ;;
    esac
  done
)
mapfile -t workflows < <(git ls-files '.github/workflows/*.yml' '.github/workflows/*.yaml')
mapfile -t pages < <(git ls-files README.md CONTRIBUTING.md research-agent/README.md 'docs/*.md')

# The configuration checks spend 10-20 s loading their rules, one CPU at most: they run beside the
# linters below, and what they print comes after them.
config_log=$(mktemp)
trap 'rm -f "$config_log"' EXIT
"$bin/python" -m scripts.config_checks >"$config_log" 2>&1 &
config_checks=$!

run "ruff check" "$bin/ruff" check .
run "ruff format --check" "$bin/ruff" format --check .
run "hadolint (${#dockerfiles[@]} Dockerfiles)" "$bin/hadolint" "${dockerfiles[@]}"
run "shellcheck (${#shell_scripts[@]} scripts)" "$bin/shellcheck" "${shell_scripts[@]}"
if [ ${#workflows[@]} -gt 0 ]; then
  run "actionlint (${#workflows[@]} workflows)" "$bin/actionlint" "${workflows[@]}"
fi
run "pymarkdown (${#pages[@]} pages)" "$bin/pymarkdown" --strict-config --config .pymarkdown.json \
  scan "${pages[@]}"

echo "==> config checks: trivy config, checkov, compose-lint"
wait "$config_checks" || failed+=("config checks")
cat "$config_log"

if [ ${#failed[@]} -gt 0 ]; then
  echo "lint FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "lint passed: ruff, hadolint, shellcheck${workflows:+, actionlint}, pymarkdown, trivy config, checkov, compose-lint"
