# Containerizing AI Agents: every command of the course. `make` (or `make help`) lists them.
.DEFAULT_GOAL := help
SHELL := /bin/bash

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000
export HOST PORT

.PHONY: help install lock docs lesson-01 lesson-01-production lesson-01-shutdown research-agent test lint
.PHONY: bench-api bench-sse-proxy bench-first-answer clean
.PHONY: docker-tools offline-images build smoke compose-test sizes bench-images bench-start context-size
.PHONY: sandbox-image lesson-04 sandbox-test bench-sandbox
.PHONY: lesson-05 lesson-05-down lesson-05-image variations-test variations-screenshot bench-variations
.PHONY: swarm-images lesson-06 lesson-06-down swarm-test bench-scaleout

help: ## List the commands of the course
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  \033[36m%-22s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(VENV)/.installed: requirements-dev.txt
	@scripts/install-venv.sh $(PYTHON) $(VENV) requirements-dev.txt
	@touch $@

install: $(VENV)/.installed ## Create .venv and install the pinned dependencies (with uv; INSTALLER=pip for pip)

lock: $(VENV)/.installed ## Re-pin requirements-dev.txt and research-agent/requirements.txt after editing a .in file
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

test: $(VENV)/.installed ## Run the test suite (installs Python packages, and Debian's redis-server and nginx when missing)
	@scripts/ensure-command.sh redis-server redis-server "the tests start a real Redis" "macOS: brew install redis"
	@scripts/ensure-command.sh nginx nginx "a test puts nginx in front of the agent's stream" "macOS: brew install nginx"
	@# tests/test_compose.py reads the Compose files with both Composes: the v2 plugin where Docker runs.
	@if docker info >/dev/null 2>&1; then scripts/docker-tools.sh >/dev/null || \
	  echo "Compose v2 could not be installed: tests/test_compose.py skips its 'docker compose' checks"; fi
	$(PY) -m pytest

lint: $(VENV)/.installed ## Lint: ruff (check, format), hadolint, shellcheck, actionlint over every file of their kind
	@scripts/lint.sh $(VENV)/bin

bench-api: $(VENV)/.installed ## Benchmark: requests/s, latency and CPU per request of the three lesson-01 steps vs bare FastAPI
	@scripts/ensure-command.sh wrk wrk "it generates the load" "macOS: brew install wrk"
	$(PY) scripts/bench_api.py

bench-first-answer: ## Benchmark: fresh clone -> `make lesson-01` -> first answer, uv against pip (a few minutes)
	@$(PYTHON) scripts/bench_first_answer.py

bench-sse-proxy: $(VENV)/.installed ## Benchmark: time to first SSE token, direct vs nginx (gzip) with/without X-Accel-Buffering
	@scripts/ensure-command.sh nginx nginx "the benchmark puts nginx in front of the agent" "macOS: brew install nginx"
	$(PY) scripts/bench_sse_proxy.py

# --- Containers (lesson 03). Each target installs what it needs first: the Docker CLI plugins, then the
# base images (pulled, or built as stand-ins from Debian packages when no registry answers: it says so).
IMAGES ?= basic multistage optimized
# TAG_SUFFIX=-mine builds and tests research-agent:optimized-mine etc., leaving the shared tags alone.
TAG_SUFFIX ?=
export TAG_SUFFIX

docker-tools: ## Install the buildx and Compose v2 CLI plugins when missing, print their versions
	@scripts/docker-tools.sh

offline-images: ## Make python:3.11-slim and redis:7 available: docker pull, else build stand-ins from Debian
	@scripts/offline-images.sh

build: docker-tools offline-images ## Build research-agent:basic, :multistage and :optimized (IMAGES="optimized" for one)
	@scripts/build-images.sh $(IMAGES)

smoke: build $(VENV)/.installed ## Run each image, check it (tests/test_container.py), docker stop it mid-stream
	CONTAINER_IMAGES="$(addsuffix $(TAG_SUFFIX),$(addprefix research-agent:,$(IMAGES)))" $(PY) -m pytest -m container tests/test_container.py tests/test_container_shutdown.py -v

compose-test: docker-tools offline-images $(VENV)/.installed ## Compose v1 and v2: up (offline), healthy, cache hit, Redis stopped, stop mid-answer, down -v
	@scripts/ensure-command.sh docker-compose docker-compose "the test runs Compose v1 as well as v2"
	$(PY) -m pytest -m container tests/test_compose.py -v

sizes: build ## Table: image sizes against their floor, and where the optimized image's bytes went
	@$(PYTHON) scripts/image_sizes.py

bench-images: docker-tools offline-images $(VENV)/.installed ## Benchmark: cold build, code-only rebuild, size, start time per Dockerfile
	$(PY) scripts/bench_images.py

bench-start: build $(VENV)/.installed ## Benchmark: docker run -> /ready and -> healthy for the built images (no rebuild)
	$(PY) scripts/bench_images.py --start-only

context-size: docker-tools ## What the build contexts send to Docker once .dockerignore has filtered them
	@scripts/context-size.sh

# --- Sandboxed tools (lesson 04): agent tools run code in throwaway containers of agent-sandbox:python.
build: sandbox-image

sandbox-image: docker-tools offline-images ## Build and smoke-test agent-sandbox:python, the image tools run code in
	@scripts/build-sandbox-image.sh

lesson-04: $(VENV)/.installed sandbox-image ## Lesson 04: API and agent whose run_python tool runs code in a sandbox container
	@echo
	@echo "  Sandboxed tools on http://$(HOST):$(PORT)  (offline model unless OPENAI_API_KEY is set; Ctrl+C stops it)"
	@echo "  Swagger UI: http://$(HOST):$(PORT)/docs"
	@echo "  Run code:   curl -s -X POST http://$(HOST):$(PORT)/v1/tools/python -H 'content-type: application/json' -d '{\"code\": \"print(2**100)\"}'"
	@echo "  Ask:        curl -s -X POST http://$(HOST):$(PORT)/v1/agent -H 'content-type: application/json' -d '{\"query\": \"What is 2**100?\"}'"
	@echo
	@$(PY) code/04_sandboxed_tools.py

sandbox-test: sandbox-image $(VENV)/.installed ## The hostile suite: fork/memory bombs, floods, escapes against real sandbox containers
	$(PY) -m pytest -m container tests/lesson_04 tests/research_agent/test_sandbox_tool.py tests/test_docs.py -v

bench-sandbox: sandbox-image $(VENV)/.installed ## Benchmark: the runner vs a bare `docker run --rm`, a warm pool and exec, p50/p95
	$(PY) scripts/bench_sandbox.py

# --- Parallel variations (lesson 05): workers run the research-agent image under its own tag, so a
# rebuild of research-agent:optimized from elsewhere cannot change the image under a running test.
LESSON05_IMAGE ?= research-agent:lesson-05

lesson-05-image: IMAGES = optimized
lesson-05-image: build
	docker tag research-agent:optimized $(LESSON05_IMAGE)

lesson-05: lesson-05-image $(VENV)/.installed ## Lesson 05: N agent variations in parallel containers, live on one page (starts Redis)
	@WORKER_IMAGE=$(LESSON05_IMAGE) scripts/lesson-05.sh serve

lesson-05-down: ## Lesson 05: remove its Redis, network and any worker container left running
	@scripts/lesson-05.sh down

variations-test: lesson-05-image $(VENV)/.installed ## Lesson 05 with real containers and headless Chromium (installs chromium)
	@scripts/ensure-command.sh chromium chromium
	WORKER_IMAGE=$(LESSON05_IMAGE) $(PY) -m pytest -m container tests/lesson_05 -v

variations-screenshot: lesson-05-image $(VENV)/.installed ## Lesson 05: the browser test, saving the page to docs/images/
	@scripts/ensure-command.sh chromium chromium
	WORKER_IMAGE=$(LESSON05_IMAGE) SCREENSHOT=docs/images/05-variations.png $(PY) -m pytest -m container tests/lesson_05/test_browser.py -v

bench-variations: lesson-05-image $(VENV)/.installed ## Benchmark: N = 1, 2, 4, 8 variations in containers vs in one process
	WORKER_IMAGE=$(LESSON05_IMAGE) $(PY) scripts/bench_variations.py

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
