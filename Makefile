# Containerizing AI Agents: every command of the course. `make` (or `make help`) lists them.
.DEFAULT_GOAL := help
SHELL := /bin/bash

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
# Lesson 08's own environment: its servers' packages (mcp 2.x, fastmcp 4.x) beside the course's
# .venv, which keeps mcp 1.x for the agent's langchain-mcp-adapters (code/lesson08/requirements-host.in).
LESSON08_VENV := $(VENV)/lesson08
# checkov, for `make lint`, in an environment of its own: its pins clash with the test tools'
# (requirements-checkov.in says which).
CHECKOV_VENV := $(VENV)/checkov
PY := $(VENV)/bin/python
# What make runs writes Python's byte-code caches (__pycache__, which git ignores) even where the
# environment says not to (PYTHONDONTWRITEBYTECODE): without them each of the test suite's several
# hundred processes compiles the course's modules, and pytest rewrites every test module, again
# (collecting the suite: 12 s of CPU without them, 5 s with them, on our build machine).
unexport PYTHONDONTWRITEBYTECODE
HOST ?= 127.0.0.1
PORT ?= 8000
export HOST PORT

.PHONY: test-as-learner help install lock docs gvisor docker-tools clean test test-tools lint ci
.PHONY: images offline-images build sandbox-image sbom context-size bench-first-answer measurements

define serving
	@echo
	@echo "  $(1) on http://$(HOST):$(PORT)  (offline model unless OPENAI_API_KEY is set; Ctrl+C stops it)"
	@echo "  Swagger UI: http://$(HOST):$(PORT)/docs"
	@echo "  Try it:     curl -s -X POST http://$(HOST):$(PORT)/$(2) -H 'content-type: application/json' -d '{\"query\": \"$(3)\"}'"
	@echo
endef

# Containers (lesson 03 on). Each target installs what it needs first: the Docker CLI plugins, then the
# base images (pulled, or built as stand-ins from Debian packages when no registry answers: it says so).
IMAGES ?= basic multistage optimized
# TAG_SUFFIX=-mine builds and tests research-agent:optimized-mine etc., leaving the shared tags alone.
TAG_SUFFIX ?=
export TAG_SUFFIX
# The group of Docker's socket, for services that are given it: Python's stat, not GNU stat's -c
# which macOS lacks.
DOCKER_GID = $(shell $(PYTHON) -c 'import os; print(os.stat("/var/run/docker.sock").st_gid)' 2>/dev/null)

# Three hashed locks, installed into the one .venv as the lessons first need them:
# requirements-lesson01.txt, what lesson 01 imports (`make lesson-01` installs only it: a fresh clone
# answers within seconds, `make bench-first-answer`); requirements.txt, what the other lessons run,
# added by the first target that needs it; requirements-dev.txt, those plus the test, benchmark and
# lint tools, at the same versions. Each step then installs the course's own packages, editable
# (scripts/install-venv.sh): the research agent and the support and lesson packages.
PACKAGES := pyproject.toml research-agent/pyproject.toml research-agent/build-requirements.txt

# make lesson-NN STEP=K runs step K of lesson NN, code/lessonNN/stepK_*.py, as a module:
# $(call step_module,NN) is lessonNN.stepK_name (run with python -m), $(call step_file,NN) its file;
# $(call step_module,NN,K) names step K whatever STEP says. A step that is not there stops make
# with the lesson's steps listed.
STEP ?=
lesson_steps = $(sort $(wildcard code/lesson$(1)/step[0-9]_*.py))
step_file = $(or $(wildcard code/lesson$(1)/step$(or $(2),$(STEP))_*.py),$(error make lesson-$(1): \
  there is no step "$(or $(2),$(STEP))"; the steps are STEP=1 to STEP=$(words $(call lesson_steps,$(1))): \
  $(notdir $(call lesson_steps,$(1)))))
step_module = $(subst /,.,$(patsubst code/%.py,%,$(call step_file,$(1),$(2))))

# Each lesson's targets and variables, in its folder (code/lessonNN/lesson.mk), in course order.
LESSON_MAKEFILES := $(sort $(wildcard code/lesson*/lesson.mk))
include $(LESSON_MAKEFILES)

# make lesson-NN STEP=K with no step K: refused before anything is built or started (a lesson whose
# stack counts as a last step, lesson 07's STEP=5, names it in LESSONNN_STACK_STEP).
CHECKED_STEPS := $(foreach n,$(patsubst lesson-%,%,$(filter lesson-%,$(MAKECMDGOALS))),$(if $(and $(STEP),\
  $(call lesson_steps,$(n)),$(filter-out $(LESSON$(n)_STACK_STEP),$(STEP))),$(call step_file,$(n))))

##@ Tests

# The tests mostly wait (on servers, streams, timeouts), so more processes than cores still help.
TEST_WORKERS ?= 4
# More arguments for pytest in `make test` and the container suites, e.g. PYTEST_ARGS="-k hostile"
# or PYTEST_ARGS="-x --lf"; .ci/run runs the sandbox suite's gVisor cases and the rest side by side.
PYTEST_ARGS ?=
test: $(VENV)/.installed $(LESSON08_VENV)/.installed $(CHECKOV_VENV)/.installed test-tools ## Run the test suite in TEST_WORKERS processes (installs the Python packages; needs redis-server, nginx and postgresql: installs them as root, else says how)
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

# The system commands `make test` needs: found on PATH, in /usr/sbin or PostgreSQL's folder; installed when missing as
# root, else the command that installs them is printed and make stops.
# A learner's first run, checked as root: a fresh clone of HEAD, a normal user in the docker group
# (made once), Docker's CLI plugins hidden, empty package caches (scripts/as-learner.sh).
test-as-learner: ## As root: `make test` as a learner's first run: a fresh clone, a normal user, no CLI plugins
	@scripts/as-learner.sh /tmp bash -c 'git config --global --replace-all safe.directory "*" && \
	  rm -rf ~/.cache/uv ~/.cache/pip ~/course && git clone -q "$(CURDIR)" ~/course && cd ~/course && \
	  start=$$(date +%s); make test; status=$$?; \
	  echo "make test: exit $$status, $$(( $$(date +%s) - start )) s from the clone"; exit $$status'

test-tools:
	@scripts/ensure-command.sh redis-server redis-server "the tests start a real Redis" "macOS: brew install redis"
	@scripts/ensure-command.sh nginx nginx "a test puts nginx in front of the agent's stream" "macOS: brew install nginx"
	@scripts/ensure-command.sh initdb postgresql "the tests start a real PostgreSQL" "macOS: brew install postgresql"
	@# tests/lesson_03/test_compose.py reads the Compose files with both Composes: the v2 plugin where Docker runs.
	@if docker info >/dev/null 2>&1; then scripts/docker-tools.sh >/dev/null || \
	  echo "No Compose v2 (above: how to install it): tests/lesson_03/test_compose.py skips its 'docker compose' checks"; fi

lint: $(VENV)/.installed $(CHECKOV_VENV)/.installed ## Lint: ruff, hadolint, shellcheck, actionlint and pymarkdown over every file of their kind; trivy config, checkov and compose-lint over every Dockerfile, manifest and Compose file
	@scripts/lint.sh $(VENV)/bin

ci: ## What CI runs (.ci/run): every image built, then test beside Swarm's checks and lint, then the other container checks five at a time
	@bash .ci/run

##@ Benchmarks

bench-first-answer: ## Fresh clone -> `make lesson-01` -> first answer, uv against pip (a few minutes)
	@BENCH_COMMAND="make $@" $(PYTHON) -m bench.first_answer

# The images lesson 03 builds, and lesson 04's proxy, are built first; the others are read when
# built (make images builds them all). SBOM_CHART=docs/images/03-sbom.png redraws lesson 03's picture.
sbom: build $(VENV)/.installed ## CycloneDX SBOMs of every image built (.build/sbom/), package counts, what the optimized image dropped
	DOCKER_BUILDKIT=1 docker build -q -t egress-proxy:squid docker/egress-proxy >/dev/null
	$(PY) -m scripts.sbom $(if $(SBOM_CHART),--chart $(SBOM_CHART))

context-size: docker-tools ## What the build contexts send to Docker once .dockerignore has filtered them
	@scripts/context-size.sh

measurements: ## The bench-results/*.json files as docs/measurements.md's tables (WRITE=1: into the page)
	@$(PYTHON) -m bench.measurements $(if $(WRITE),--write)

##@ Images

build: docker-tools offline-images sandbox-image ## Build research-agent:basic, :multistage, :optimized and agent-sandbox:python (IMAGES=optimized: one research-agent image)
	@scripts/build-images.sh $(IMAGES)

images: ## Build every image the container checks use, side by side (base images, lesson 03's three, the sandbox, lessons 05 to 10's)
	@scripts/build-all-images.sh

offline-images: ## Make python:3.11-slim, redis:7 and haproxy:2.6 available (postgres:15 only when named): docker pull, else build stand-ins from Debian
	@scripts/offline-images.sh

sandbox-image: docker-tools offline-images ## Build and smoke-test agent-sandbox:python, the image tools run code in
	@scripts/build-sandbox-image.sh

##@ Setup

# `make help` prints the targets with a `## description`, under the `##@ Group` line above them:
# the lessons' files first, in course order, then this one's course-wide groups.
help: ## List the commands of the course, by group
	@awk 'BEGIN {FS = ":.*## "; printf "Containerizing AI Agents: make TARGET\n"} \
	  /^##@ / {printf "\n\033[1m%s\033[0m\n", substr($$0, 5)} \
	  /^[a-zA-Z0-9_-]+:.*## / {printf "  \033[36m%-22s\033[0m %s\n", $$1, $$2}' \
	  $(filter $(LESSON_MAKEFILES),$(MAKEFILE_LIST)) $(filter-out $(LESSON_MAKEFILES),$(MAKEFILE_LIST))

$(VENV)/.lesson01: requirements-lesson01.txt $(PACKAGES)
	@scripts/install-venv.sh $(PYTHON) $(VENV) requirements-lesson01.txt
	@touch $@

$(VENV)/.lessons: requirements.txt $(PACKAGES)
	@scripts/install-venv.sh $(PYTHON) $(VENV) requirements.txt
	@touch $@ $(VENV)/.lesson01

$(VENV)/.installed: requirements-dev.txt requirements.txt requirements-lesson01.txt $(PACKAGES)
	@scripts/install-venv.sh $(PYTHON) $(VENV) requirements-dev.txt
	@touch $@ $(VENV)/.lessons $(VENV)/.lesson01

# checkov alone, from its own hashed lock (scripts/config_checks.py finds it here).
$(CHECKOV_VENV)/.installed: requirements-checkov.txt | $(VENV)/.lessons
	@echo "==> $(CHECKOV_VENV): checkov, for make lint"
	@$(PYTHON) -m venv --without-pip --clear $(CHECKOV_VENV)
	@UV_NATIVE_TLS=1 UV_PYTHON_DOWNLOADS=never $(VENV)/bin/uv pip install --quiet \
	  --python $(CHECKOV_VENV)/bin/python --compile-bytecode --require-hashes -r requirements-checkov.txt
	@touch $@

install: $(VENV)/.installed $(CHECKOV_VENV)/.installed ## Create .venv and install the pinned dependencies of the lessons and the tests (with uv; INSTALLER=pip for pip)

lock: $(VENV)/.installed ## Re-pin research-agent/requirements.txt, requirements-dev.txt, requirements.txt and requirements-lesson01.txt after editing a .in file
	$(VENV)/bin/uv pip compile --quiet --generate-hashes -p 3.11 research-agent/requirements.in -o research-agent/requirements.txt
	$(VENV)/bin/uv pip compile --quiet --generate-hashes -p 3.11 research-agent/build-requirements.in -o research-agent/build-requirements.txt
	$(VENV)/bin/uv pip compile --quiet --generate-hashes -p 3.11 requirements-dev.in -o requirements-dev.txt
	$(VENV)/bin/uv pip compile --quiet --generate-hashes -p 3.11 requirements.in -c requirements-dev.txt -o requirements.txt
	$(VENV)/bin/uv pip compile --quiet --generate-hashes -p 3.11 requirements-lesson01.in -c requirements-dev.txt -o requirements-lesson01.txt
	$(VENV)/bin/uv pip compile --quiet --generate-hashes -p 3.11 code/lesson08/requirements.in -o code/lesson08/requirements.txt
	$(VENV)/bin/uv pip compile --quiet --generate-hashes -p 3.11 code/lesson08/requirements-host.in -c code/lesson08/requirements.txt -o code/lesson08/requirements-host.txt
	$(VENV)/bin/uv pip compile --quiet --generate-hashes -p 3.11 docker/phoenix/requirements.in -o docker/phoenix/requirements.txt
	$(VENV)/bin/uv pip compile --quiet --generate-hashes -p 3.11 code/lesson12/requirements.in -c requirements-dev.txt -o code/lesson12/requirements.txt
	$(VENV)/bin/uv pip compile --quiet --generate-hashes -p 3.11 requirements-checkov.in -o requirements-checkov.txt

docs: $(VENV)/.installed ## Re-sync the code excerpts in docs/ from the files they quote
	$(PY) scripts/docs_sync.py

gvisor: ## Install gVisor (Debian's runsc) and register it with Docker as runtimes runsc (no network) and runsc-net (as root: reloads dockerd, never restarts it)
	@scripts/gvisor.sh

docker-tools: ## Check the buildx and Compose v2 CLI plugins, print their versions (installs them as root on Debian/Ubuntu)
	@scripts/docker-tools.sh

clean: ## Remove the virtual environment and caches
	rm -rf $(VENV) .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
