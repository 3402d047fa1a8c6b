# Containerizing AI Agents: every command of the course. `make` (or `make help`) lists them.
.DEFAULT_GOAL := help
SHELL := /bin/bash

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000
export HOST PORT

.PHONY: help install lock docs lesson-01 lesson-01-production lesson-01-shutdown research-agent test bench-api bench-sse-proxy clean
.PHONY: docker-tools offline-images build smoke compose-test sizes bench-images context-size
.PHONY: swarm-images lesson-06 lesson-06-down swarm-test bench-scaleout

help: ## List the commands of the course
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  \033[36m%-22s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(VENV)/.installed: requirements-dev.txt
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "Python 3.11 or newer is needed (found $(PYTHON))"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	@touch $@

install: $(VENV)/.installed ## Create .venv and install the pinned dependencies

lock: $(VENV)/.installed ## Re-pin requirements-dev.txt and research-agent/requirements.txt after editing a .in file
	$(VENV)/bin/pip install --quiet uv
	$(VENV)/bin/uv pip compile --quiet --generate-hashes -p 3.11 research-agent/requirements.in -o research-agent/requirements.txt
	$(VENV)/bin/uv pip compile --quiet --generate-hashes -p 3.11 requirements-dev.in -o requirements-dev.txt

docs: $(VENV)/.installed ## Re-sync the code excerpts in docs/ from the files they quote
	$(PY) scripts/docs_sync.py

define serving
	@echo
	@echo "  $(1) on http://$(HOST):$(PORT)  (offline model unless OPENAI_API_KEY is set; Ctrl+C stops it)"
	@echo "  Swagger UI: http://$(HOST):$(PORT)/docs"
	@echo "  Try it:     curl -s -X POST http://$(HOST):$(PORT)/$(2) -H 'content-type: application/json' -d '{\"query\": \"$(3)\"}'"
	@echo
endef

lesson-01: $(VENV)/.installed ## Lesson 01: run the basic agent API (PORT=8100 make lesson-01 for another port)
	$(call serving,Basic agent API,v1/invoke,What is a container?)
	@$(PY) code/01_basic_api.py

lesson-01-production: $(VENV)/.installed ## Lesson 01: run the production API (JSON logs, /metrics, errors, cache)
	$(call serving,Production agent API,v1/invoke,What is a container?)
	@$(PY) code/01_production_api.py

lesson-01-shutdown: $(VENV)/.installed ## Lesson 01: run the graceful-shutdown example (send it SIGTERM mid-stream)
	$(call serving,Graceful-shutdown API,v1/stream,What is a container?)
	@$(PY) code/01_graceful_shutdown.py

research-agent: $(VENV)/.installed ## Run the research agent locally (offline model and local search by default)
	$(call serving,Research agent,v1/research,Why use a multi-stage Docker build?)
	@cd research-agent && ../$(PY) main.py

test: $(VENV)/.installed ## Run the test suite (installs Python packages, redis-server and nginx when missing)
	@scripts/ensure-command.sh redis-server redis-server
	@scripts/ensure-command.sh nginx nginx
	$(PY) -m pytest

bench-api: $(VENV)/.installed ## Benchmark: requests/s and latency of the basic vs production API vs bare FastAPI
	@scripts/ensure-command.sh wrk wrk
	$(PY) scripts/bench_api.py

bench-sse-proxy: $(VENV)/.installed ## Benchmark: time to first SSE token, direct vs nginx (gzip) with/without X-Accel-Buffering
	@scripts/ensure-command.sh nginx nginx
	$(PY) scripts/bench_sse_proxy.py

# --- Containers (lesson 03). Each target installs what it needs first: the Docker CLI plugins, then the
# base images (pulled, or built as stand-ins from Debian packages when no registry answers: it says so).
IMAGES ?= basic multistage optimized

docker-tools: ## Install the buildx and Compose v2 CLI plugins when missing, print their versions
	@scripts/docker-tools.sh

offline-images: ## Make python:3.11-slim and redis:7 available: docker pull, else build stand-ins from Debian
	@scripts/offline-images.sh

build: docker-tools offline-images ## Build research-agent:basic, :multistage and :optimized (IMAGES="optimized" for one)
	@scripts/build-images.sh $(IMAGES)

smoke: build $(VENV)/.installed ## Run each image, check it (tests/test_container.py), docker stop it mid-stream
	CONTAINER_IMAGES="$(addprefix research-agent:,$(IMAGES))" $(PY) -m pytest -m container tests/test_container.py tests/test_container_shutdown.py -v

compose-test: docker-tools offline-images $(VENV)/.installed ## docker compose up --wait (offline), cache hit, Redis stopped, down -v
	$(PY) -m pytest -m container tests/test_compose.py -v

sizes: build ## Table: image sizes against their floor (base image + runtime dependencies)
	@$(PYTHON) scripts/image_sizes.py

bench-images: docker-tools offline-images $(VENV)/.installed ## Benchmark: cold build, code-only rebuild, size, start time per Dockerfile
	$(PY) scripts/bench_images.py

context-size: docker-tools ## What the build contexts send to Docker once .dockerignore has filtered them
	@scripts/context-size.sh

# --- Scale-out (lesson 06): the research agent on Docker Swarm behind HAProxy. The Kubernetes manifests
# in deploy/k8s/ are validated offline by `make test` (tests/test_k8s.py).
STACK ?= research-agent
# HAProxy publishes 8080, or PORT when it is given (the 8000 default above is for the host-run lessons).
LESSON06_PORT = $(if $(filter file,$(origin PORT)),8080,$(PORT))

swarm-images: docker-tools
	@scripts/offline-images.sh python:3.11-slim redis:7 haproxy:2.6
	@scripts/build-images.sh optimized

lesson-06: swarm-images $(VENV)/.installed ## Lesson 06: 3 agent replicas behind HAProxy on Swarm, port 8080 (or PORT); returns once healthy
	@$(PY) scripts/swarm.py up --stack $(STACK) --port $(LESSON06_PORT)

lesson-06-down: $(VENV)/.installed ## Lesson 06: remove the stack and its volume; leave Swarm if lesson-06 joined it
	@$(PY) scripts/swarm.py down --stack $(STACK)

swarm-test: swarm-images $(VENV)/.installed ## make lesson-06 for real: replicas, request ids, shared cache, SSE, rollback, lesson-06-down
	$(PY) -m pytest -m container tests/test_swarm.py -v

bench-scaleout: swarm-images $(VENV)/.installed ## Benchmark: rolling update and docker stop under load (target: 0 failed), 1 vs 3 replicas
	@scripts/ensure-command.sh wrk wrk
	$(PY) scripts/bench_scaleout.py

clean: ## Remove the virtual environment and caches
	rm -rf $(VENV) .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
