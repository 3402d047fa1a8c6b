# Containerizing AI Agents: every command of the course. `make` (or `make help`) lists them.
.DEFAULT_GOAL := help
SHELL := /bin/bash

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
# Lesson 08's own environment: its servers' packages (mcp 2.x, fastmcp 4.x) beside the course's
# .venv, which keeps mcp 1.x for the agent's langchain-mcp-adapters (docker/lesson08/requirements-host.in).
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

.PHONY: help install lock docs gvisor lesson-01 lesson-01-production research-agent test test-tools lint
.PHONY: lesson-02 lesson-03 lesson-03-down ci
.PHONY: bench-api bench-sse-proxy bench-first-answer measurements clean
.PHONY: docker-tools images offline-images build smoke compose-test sizes sbom bench-images bench-start bench-start-host context-size
.PHONY: sandbox-image lesson-04 lesson-04-production sandbox-test bench-sandbox
.PHONY: lesson-05 lesson-05-down lesson-05-image variations-test variations-screenshot bench-variations
.PHONY: swarm-images lesson-06 lesson-06-down swarm-test bench-scaleout
.PHONY: lesson-07-image lesson-07 lesson-07-step-check lesson-07-step lesson-07-banner lesson-07-redis lesson-07-stack
.PHONY: lesson-07-down lesson-07-trace pubsub-test bench-pubsub
.PHONY: lesson-08-images lesson-08 lesson-08-step lesson-08-stack lesson-08-down lesson-08-client mcp-test bench-mcp
.PHONY: lesson-08-replicas lesson-08-replicas-down
.PHONY: lesson-09 lesson-09-step-check lesson-09-step lesson-09-banner lesson-09-viewer lesson-09-stack lesson-09-images lesson-09-down traces-test bench-tracing
.PHONY: lesson-10-image lesson-10 lesson-10-step-check lesson-10-step lesson-10-banner lesson-10-stack lesson-10-down durable-test bench-durable
.PHONY: lesson-11 evals evals-baseline evals-screenshot evals-phoenix-test bench-evals
.PHONY: lesson-12 lesson-12-step-check lesson-12-step lesson-12-stack lesson-12-down lesson-12-image a2a-test a2a-tck bench-a2a

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
# Lesson 05's workers run the research-agent image under its own tag, so a rebuild of
# research-agent:optimized from elsewhere cannot change the image under a running test.
LESSON05_IMAGE ?= research-agent:lesson-05
# Lesson 06 on Docker Swarm behind HAProxy. The Kubernetes manifests in deploy/k8s/ are validated
# offline by `make test` (tests/lesson_06/test_k8s.py).
STACK ?= research-agent
# HAProxy publishes 8080, or PORT when it is given (the 8000 default above is for the host-run lessons).
LESSON06_PORT = $(if $(filter file,$(origin PORT)),8080,$(PORT))
# Lesson 07: five agents and a gateway from one image, as the Compose project lesson07.
LESSON07_IMAGE ?= lesson-07-agents
LESSON07_PROJECT ?= lesson07
LESSON07_PORT ?= 8070
export LESSON07_IMAGE LESSON07_PORT
# Its secrets (a Redis password per service, the users' file, the token key), made once into a
# folder only you can read: code/lesson07/redis_users.py.
LESSON07_SECRETS ?= $(CURDIR)/deploy/lesson07/secrets
export LESSON07_SECRETS
LESSON07_COMPOSE = docker compose -p $(LESSON07_PROJECT) -f deploy/lesson07/compose.yaml
# The group of Docker's socket, for services that are given it: Python's stat, not GNU stat's -c
# which macOS lacks.
DOCKER_GID = $(shell $(PYTHON) -c 'import os; print(os.stat("/var/run/docker.sock").st_gid)' 2>/dev/null)
# Lesson 08: the agent, the MCP gateway and its Docker guards as the Compose project lesson08; the
# gateway starts the tool servers' containers itself (label lesson08.owner=lesson08), the python
# server its sandboxes (agent-sandbox.owner=lesson08). Every such name is the project's name
# (COMPOSE_PROJECT_NAME, which Compose v1 and v2 both read), so LESSON08_PROJECT=other is a second
# copy of the lesson that this one's lesson-08-down leaves alone.
LESSON08_PROJECT ?= lesson08
LESSON08_PORT ?= 8085
LESSON08_MCP_PORT ?= 8086
LESSON08_AGENT_IMAGE ?= research-agent:optimized-lesson08
export LESSON08_PORT LESSON08_MCP_PORT LESSON08_AGENT_IMAGE
LESSON08_COMPOSE = COMPOSE_PROJECT_NAME=$(LESSON08_PROJECT) \
  LESSON08_AGENT_TOKEN=$$(cat deploy/lesson08/agent-token 2>/dev/null || echo none) \
  LESSON08_OPERATOR_TOKEN=$$(cat deploy/lesson08/operator-token 2>/dev/null) \
  DOCKER_GID=$(DOCKER_GID) docker compose -p $(LESSON08_PROJECT) -f deploy/lesson08/compose.yaml
# Lesson 08, going further: two stateless gateway replicas behind HAProxy, their pins in Redis, as
# the Compose project lesson08r (deploy/lesson08/replicas.yaml), on the same ports as lesson-08.
LESSON08_REPLICAS_PROJECT ?= lesson08r
LESSON08_REPLICAS_COMPOSE = COMPOSE_PROJECT_NAME=$(LESSON08_REPLICAS_PROJECT) \
  LESSON08_AGENT_TOKEN=$$(cat deploy/lesson08/agent-token 2>/dev/null || echo none) \
  LESSON08_OPERATOR_TOKEN=$$(cat deploy/lesson08/operator-token 2>/dev/null) \
  docker compose -p $(LESSON08_REPLICAS_PROJECT) -f deploy/lesson08/replicas.yaml
# Lesson 10: edge, two replicas of the durable-runs API and Postgres, as the Compose project lesson10.
LESSON10_PORT ?= 8110
LESSON10_IMAGE ?= lesson-10-agent
export LESSON10_PORT LESSON10_IMAGE
LESSON10_COMPOSE = DOCKER_GID=$(DOCKER_GID) docker compose -p lesson10 -f deploy/lesson10/compose.yaml
# Lesson 12: the research agent over A2A, edge on 8120 (LESSON12_PORT), two replicas, Postgres, a
# client agent on 8121 and lesson 08's Docker guard, as the Compose project lesson12.
LESSON12_PORT ?= 8120
LESSON12_PLANNER_PORT ?= 8121
LESSON12_IMAGE ?= lesson-12-agent
export LESSON12_PORT LESSON12_PLANNER_PORT LESSON12_IMAGE
LESSON12_COMPOSE = DOCKER_GID=$(DOCKER_GID) docker compose -p lesson12 -f deploy/lesson12/compose.yaml
# Lesson 09: lesson 03's stack plus traces and a viewer, as the Compose project lesson09.
LESSON09_PORT ?= 8090
VIEWER_PORT ?= 6006
# Step 4's write-only ingest, on the host beside its API (the stack's ingest is not published).
LESSON09_INGEST_PORT ?= 4318
export VIEWER_PORT
LESSON09_PROJECT ?= lesson09
LESSON09_COMPOSE = AGENT_PORT=$(LESSON09_PORT) docker compose -p $(LESSON09_PROJECT) -f research-agent/docker-compose.yml -f deploy/lesson09/compose.traces.yaml

##@ Lessons

# Lesson 01 is five steps, code/01_step1_*.py to code/01_step5_*.py, each an API that serves until
# Ctrl+C: `make lesson-01 STEP=K` serves step K; `make lesson-01` the last, where the steps arrive.
LESSON01_STEP := $(or $(STEP),5)
LESSON01_FILE := $(wildcard code/01_step$(LESSON01_STEP)_*.py)
ifneq ($(filter lesson-01,$(MAKECMDGOALS)),)
ifneq ($(words $(LESSON01_FILE)),1)
$(error make lesson-01: there is no step "$(STEP)"; the steps are STEP=1 to STEP=5)
endif
endif

lesson-01: $(VENV)/.lessons ## Lesson 01: an agent behind an API, in 5 steps (STEP=1..5; alone, step 5; PORT=8100 for another port)
	@echo
	@echo "  Lesson 01, step $(LESSON01_STEP) of 5: $(LESSON01_FILE) (docs/01-agent-api.md, section $(LESSON01_STEP))"
	$(call serving,Agent API,v1/invoke,What is a container?)
	@$(PY) $(LESSON01_FILE)

lesson-01-production: $(VENV)/.lessons ## Lesson 01, Going further: the production version (settings, strict input, body limit, cache, CORS)
	$(call serving,Agent API (production version),v1/invoke,What is a container?)
	@$(PY) code/01_production_api.py

# make lesson-02 STEP=K runs step K of lesson 02, code/02_stepK_*.py: steps 1 to 3 are scripts that
# print an answer, steps 4 and 5 serve it. Without STEP: the research agent package they arrive at.
STEP ?=
LESSON02_STEP = $(wildcard code/02_step$(STEP)_*.py)

lesson-02: $(VENV)/.lessons $(if $(STEP),,research-agent) ## Lesson 02: the research agent on the host (offline by default); STEP=1..5 runs that step of the lesson
ifneq ($(STEP),)
	@test -n "$(LESSON02_STEP)" || { echo "Lesson 02 has steps 1 to 5: STEP=$(STEP) is none of them" >&2; exit 2; }
	$(if $(filter 1 2 3,$(STEP)),,$(call serving,Lesson 02 step $(STEP),v1/research,What does docker stop do?))
	@$(PY) $(LESSON02_STEP)
endif

research-agent: $(VENV)/.lessons ## Lesson 02 under the app's name: the same as make lesson-02
	$(call serving,Research agent,v1/research,Why use a multi-stage Docker build?)
	@cd research-agent && ../$(PY) main.py

lesson-03: docker-tools offline-images ## Lesson 03: the research agent, Redis and an HAProxy edge with Compose, built; returns once healthy
	cd research-agent && AGENT_PORT=$(PORT) docker compose up --build --wait
	@echo
	@echo "  Research agent (Compose: HAProxy edge, agent, Redis) on http://127.0.0.1:$(PORT)  (offline model unless OPENAI_API_KEY is set)"
	@echo "  Try it:  curl -s -X POST http://127.0.0.1:$(PORT)/v1/research -H 'content-type: application/json' -d '{\"query\": \"Why use a multi-stage Docker build?\"}'"
	@echo "           ask the same again: \"cached\": true, the answer came from Redis"
	@echo "  Status:  cd research-agent && docker compose ps      Logs: docker compose logs -f agent"
	@echo "  Stop:    make lesson-03-down   (removes the containers and the cache volume)"
	@echo

lesson-03-down: docker-tools ## Lesson 03: stop the Compose stack and remove its containers and cache volume
	cd research-agent && docker compose down -v

# Lesson 04 is four steps, code/04_step1_*.py to code/04_step4_*.py: `make lesson-04 STEP=K` runs
# step K; `make lesson-04` the last, the API. The first three are scripts that print and exit.
LESSON04_STEP := $(or $(STEP),4)
LESSON04_FILE := $(wildcard code/04_step$(LESSON04_STEP)_*.py)
ifneq ($(filter lesson-04,$(MAKECMDGOALS)),)
ifneq ($(words $(LESSON04_FILE)),1)
$(error make lesson-04: there is no step "$(STEP)"; the steps are STEP=1 to STEP=4)
endif
endif
LESSON04_ABOUT_1 := It runs eight programs that attack the machine, each in a throwaway container with every restriction on.
LESSON04_ABOUT_2 := An agent asks run_python to run the programs it writes (offline model unless OPENAI_API_KEY is set).
LESSON04_ABOUT_3 := It sweeps expired leftovers, then sends eight runs at once: four containers at a time.

lesson-04: $(VENV)/.lessons sandbox-image ## Lesson 04: code run in throwaway containers, in 4 steps (STEP=1..4; alone, step 4: the API and its agent)
ifeq ($(LESSON04_STEP),4)
	@echo
	@echo "  Lesson 04, step 4: $(LESSON04_FILE), the sandbox behind an API (docs/04-sandboxed-tools.md, section 4)"
	@echo "  Sandboxed tools on http://$(HOST):$(PORT)  (offline model unless OPENAI_API_KEY is set; Ctrl+C stops it)"
	@echo "  Swagger UI: http://$(HOST):$(PORT)/docs"
	@echo "  Run code:   curl -s -X POST http://$(HOST):$(PORT)/v1/tools/python -H 'content-type: application/json' -d '{\"code\": \"print(2**100)\"}'"
	@echo "  Ask:        curl -s -X POST http://$(HOST):$(PORT)/v1/agent -H 'content-type: application/json' -d '{\"query\": \"What is 2**100?\"}'"
	@echo
else
	@echo
	@echo "  Lesson 04, step $(LESSON04_STEP) of 4: $(LESSON04_FILE) (docs/04-sandboxed-tools.md, section $(LESSON04_STEP))"
	@echo "  $(LESSON04_ABOUT_$(LESSON04_STEP))"
	@echo "  It prints what happened and exits. Next: make lesson-04 STEP=$(shell echo $$(($(LESSON04_STEP) + 1)))"
	@echo
endif
	@$(PY) $(LESSON04_FILE)

lesson-04-production: $(VENV)/.lessons sandbox-image ## Lesson 04, Going further: the production API (the research agent's runner: error shape, queue, pool, egress, gVisor)
	@echo
	@echo "  Sandboxed tools, production version, on http://$(HOST):$(PORT)  (offline model unless OPENAI_API_KEY is set; Ctrl+C stops it)"
	@echo "  Swagger UI: http://$(HOST):$(PORT)/docs"
	@echo "  Run code:   curl -s -X POST http://$(HOST):$(PORT)/v1/tools/python -H 'content-type: application/json' -d '{\"code\": \"print(2**100)\"}'"
	@echo "  Ask:        curl -s -X POST http://$(HOST):$(PORT)/v1/agent -H 'content-type: application/json' -d '{\"query\": \"What is 2**100?\"}'"
	@echo "  A pool of containers started ahead: SANDBOX_POOL_SIZE=2 make lesson-04-production"
	@echo
	@$(PY) code/04_sandboxed_tools.py

# Lesson 05 is five steps, code/05_step1_*.py to code/05_step5_*.py: `make lesson-05 STEP=K` runs step
# K beside the lesson's Redis and network (scripts/lesson-05.sh run); steps 1 to 3 print and exit, 4
# and 5 serve an API. `make lesson-05` alone runs where the steps arrive: the production API and its page.
LESSON05_FILE := $(wildcard code/05_step$(STEP)_*.py)
ifneq ($(filter lesson-05,$(MAKECMDGOALS)),)
ifneq ($(STEP),)
ifneq ($(words $(LESSON05_FILE)),1)
$(error make lesson-05: there is no step "$(STEP)"; the steps are STEP=1 to STEP=5)
endif
endif
endif
LESSON05_ABOUT_1 := It starts one variation of the research agent in a container and prints the events it sends through Redis.
LESSON05_ABOUT_2 := It starts three variations at once, each from its preset, and prints their events as they come.
LESSON05_ABOUT_3 := It copies every variation's events into one stream for the run, and prints that stream, ids first.
LESSON05_ABOUT_4 := An API: POST /v1/runs starts a run, GET /v1/runs/ID/events streams its events; Last-Event-ID resumes.
LESSON05_ABOUT_5 := The API again: each variation now ends with its exit code, or at the run's deadline, its container removed.
LESSON05_NEXT_4 := make lesson-05 STEP=5
LESSON05_NEXT_5 := make lesson-05 (where the steps arrive: the production API and its page)

lesson-05: lesson-05-image $(VENV)/.lessons ## Lesson 05: N agent variations in parallel containers, in 5 steps (STEP=1..5); alone: the production API and its live page (starts Redis; TRACES=1: traces into lesson 09's viewer, the workers' through its ingest)
ifeq ($(STEP),)
	@WORKER_IMAGE=$(LESSON05_IMAGE) scripts/lesson-05.sh serve
else
	@echo
	@echo "  Lesson 05, step $(STEP) of 5: $(LESSON05_FILE) (docs/05-parallel-variations.md, section $(STEP))"
	@echo "  $(LESSON05_ABOUT_$(STEP))"
ifneq ($(filter 4 5,$(STEP)),)
	@echo "  API on http://$(HOST):$(PORT)  (offline model unless OPENAI_API_KEY is set; Ctrl+C stops it)"
	@echo "  Try it: curl -s -X POST http://$(HOST):$(PORT)/v1/runs -H 'content-type: application/json' -d '{\"query\": \"How do I stop a container gracefully?\"}'"
	@echo "  Next:   $(LESSON05_NEXT_$(STEP))"
else
	@echo "  Offline model unless OPENAI_API_KEY is set. It prints what happened and exits. Next: make lesson-05 STEP=$(shell echo $$(($(STEP) + 1)))"
endif
	@echo "  Stop all: make lesson-05-down   (removes Redis, the network and any container a step left)"
	@echo
	@WORKER_IMAGE=$(LESSON05_IMAGE) scripts/lesson-05.sh run $(LESSON05_FILE)
endif

lesson-05-down: ## Lesson 05: remove its Redis, network and any worker container left running, the steps' too (disconnects lesson 09's trace ingest)
	@scripts/lesson-05.sh down

lesson-06: swarm-images $(VENV)/.lessons ## Lesson 06: 3 agent replicas behind HAProxy on Swarm, port 8080 (or PORT); returns once healthy
	@$(PY) scripts/swarm.py up --stack $(STACK) --port $(LESSON06_PORT)

lesson-06-down: $(VENV)/.lessons ## Lesson 06: remove the stack and its volume; leave Swarm if lesson-06 joined it
	@$(PY) scripts/swarm.py down --stack $(STACK)

# Lesson 07 is four steps on the host, code/07_step1_*.py to code/07_step4_*.py, each a script that prints
# and exits, against the steps' own Redis (a container on loopback, with a password): `make lesson-07
# STEP=K` runs step K. Alone (or STEP=5), `make lesson-07` brings up what the steps arrive at: the five
# agents and the gateway as the Compose project lesson07.
LESSON07_STEP_FILE = $(firstword $(wildcard code/07_step$(STEP)_*.py))
LESSON07_REDIS = $(LESSON07_PROJECT)-redis
LESSON07_REDIS_PORT ?= 6307
LESSON07_STEPS_SECRET := deploy/lesson07/steps-redis-password
LESSON07_ABOUT_1 := Five agents, each reading one topic and writing the next: three questions asked, routed, answered, counted.
LESSON07_ABOUT_2 := A consumer dies holding an event (a second process, kill -9): the event stays pending, another claims it.
LESSON07_ABOUT_3 := The first question's event arrives a second time: every effect is stored once.
LESSON07_ABOUT_4 := A model server that is down, and an event that is not a CloudEvent: both end in a dead-letter topic.

lesson-07: $(if $(filter-out 5,$(STEP)),lesson-07-step,lesson-07-stack) ## Lesson 07: event-driven agents in 5 steps (STEP=1..4: a script on the host; alone or STEP=5: five agents on Redis Streams in Compose, gateway on 8070 (LESSON07_PORT), returns once healthy)

lesson-07-step-check:
	@if [ -z "$(LESSON07_STEP_FILE)" ]; then echo "make lesson-07: there is no step \"$(STEP)\"; the steps are STEP=1 to STEP=5" >&2; exit 2; fi

# What `make lesson-07 STEP=K` prints before the step: which file, what it shows, its Redis.
define lesson07_banner
	@echo
	@echo "  Lesson 07, step $(STEP) of 5: $(LESSON07_STEP_FILE) (docs/07-event-driven-agents.md, section $(STEP))"
	@echo "  $(LESSON07_ABOUT_$(STEP))"
	@echo "  Offline model unless OPENAI_API_KEY is set. It prints what happened and exits. Next: make lesson-07 STEP=$(shell echo $$(($(STEP) + 1)))"
	@echo "  Its Redis: the container $(LESSON07_REDIS) on 127.0.0.1:$(LESSON07_REDIS_PORT); make lesson-07-down removes it."
	@echo
endef

lesson-07-step: lesson-07-step-check $(VENV)/.lessons lesson-07-redis
	$(lesson07_banner)
	@REDIS_URL="redis://:$$(cat $(LESSON07_STEPS_SECRET))@127.0.0.1:$(LESSON07_REDIS_PORT)/0" $(PY) $(LESSON07_STEP_FILE)

# The banner alone: tests/lesson_07/test_steps.py compares it with the doc.
lesson-07-banner: lesson-07-step-check
	$(lesson07_banner)

# The steps' Redis: redis:7 as its own user, on loopback, its password from a file only you can read
# (passed in the environment, never on a command line); started once and kept between steps.
lesson-07-redis: $(LESSON07_STEPS_SECRET)
	@scripts/offline-images.sh redis:7
	@if [ -z "$$(docker ps -q --filter name='^$(LESSON07_REDIS)$$')" ]; then \
	  docker rm -f $(LESSON07_REDIS) >/dev/null 2>&1; \
	  REDIS_PASSWORD="$$(cat $(LESSON07_STEPS_SECRET))" docker run -d --name $(LESSON07_REDIS) --user redis \
	    -e REDIS_PASSWORD -p 127.0.0.1:$(LESSON07_REDIS_PORT):6379 --read-only --tmpfs /tmp \
	    --cap-drop ALL --security-opt no-new-privileges redis:7 sh -c \
	    'printf "requirepass \"%s\"\nsave \"\"\n" "$$REDIS_PASSWORD" > /tmp/auth.conf && exec redis-server /tmp/auth.conf' >/dev/null; \
	fi
	@for i in $$(seq 150); do \
	  docker exec $(LESSON07_REDIS) sh -c 'REDISCLI_AUTH="$$REDIS_PASSWORD" redis-cli ping' 2>/dev/null | grep -q PONG && exit 0; sleep 0.2; \
	done; echo "$(LESSON07_REDIS) does not answer: docker logs $(LESSON07_REDIS)" >&2; exit 1

# The steps' Redis password, random, made once, readable by you alone (not in git).
$(LESSON07_STEPS_SECRET):
	@umask 077 && head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > $@

lesson-07-stack: lesson-07-image $(LESSON07_SECRETS)/users.acl
	$(LESSON07_COMPOSE) up -d --wait
	@echo
	@echo "  Event-driven agents (Compose project $(LESSON07_PROJECT)) behind the gateway on http://127.0.0.1:$(LESSON07_PORT)  (offline model unless OPENAI_API_KEY is set)"
	@echo "  Enrol:    curl -s -X POST http://127.0.0.1:$(LESSON07_PORT)/v1/students -H 'content-type: application/json' -d '{\"student_id\": \"ann\"}'"
	@echo "            (it returns the student's student_token, once: send it as -H 'Authorization: Bearer TOKEN')"
	@echo "  Ask:      curl -s -X POST http://127.0.0.1:$(LESSON07_PORT)/v1/questions -H 'Authorization: Bearer TOKEN' -H 'content-type: application/json' -d '{\"student_id\": \"ann\", \"text\": \"Give me an exercise on Docker volumes\"}'"
	@echo "  Answer:   curl -s -H 'Authorization: Bearer TOKEN' http://127.0.0.1:$(LESSON07_PORT)/v1/questions/ID"
	@echo "  Progress: curl -s -H 'Authorization: Bearer TOKEN' http://127.0.0.1:$(LESSON07_PORT)/v1/students/ann/progress"
	@echo "  Watch:    make lesson-07-trace     (each event, topic, consumer and delivery count, as it happens)"
	@echo "  Scale:    $(LESSON07_COMPOSE) up -d --scale concepts=3"
	@echo "  Kill one: docker kill \$$($(LESSON07_COMPOSE) ps -q concepts | head -1)"
	@echo "  Stop:     make lesson-07-down   (removes the containers, the network and the Redis volume)"
	@echo

# Lesson 07's secrets, random, made once with umask 077 (Compose mounts each into its container; not in git).
$(LESSON07_SECRETS)/users.acl:
	@$(PYTHON) code/lesson07/redis_users.py $(LESSON07_SECRETS)

lesson-07-down: docker-tools ## Lesson 07: remove its containers, network and Redis volume, and the steps' Redis
	$(LESSON07_COMPOSE) down -v --remove-orphans
	@docker rm -f $(LESSON07_REDIS) >/dev/null 2>&1 || true

# Lesson 08 is five steps, code/08_step1_*.py to code/08_step5_*.py, run on the host from lesson 08's own
# environment (mcp 2.x): `make lesson-08 STEP=K` runs step K. Alone, `make lesson-08` brings up what the
# steps arrive at, in Compose: the gateway, its tool containers started on demand, and the agent.
LESSON08_STEP_FILE = $(wildcard code/08_step$(STEP)_*.py)
LESSON08_ABOUT_1 := It serves the notes server on http://127.0.0.1:8091/mcp until Ctrl+C: send it the doc's curl from a second terminal.
LESSON08_ABOUT_2 := It serves the notes server, then a client discovers it, lists its tools and calls one.
LESSON08_ABOUT_3 := It serves two tool servers and a gateway in front of them, then asks the gateway.
LESSON08_ABOUT_4 := It asks the gateway as two clients, each with its own bearer token and allow-list.
LESSON08_ABOUT_5 := It asks the gateway, changes a tool's description on its server, and asks again.
LESSON08_NEXT_5 := Going further: make lesson-08 (the production gateway, in Compose)

lesson-08: $(if $(STEP),lesson-08-step,lesson-08-stack) ## Lesson 08: tools over MCP behind a gateway. STEP=1..5: that step on the host; alone: the gateway on 8086 starting tool containers on demand, the agent on 8085

lesson-08-step: $(LESSON08_VENV)/.installed
	@test -n "$(LESSON08_STEP_FILE)" || { echo "Lesson 08 has steps 1 to 5: STEP=$(STEP) is none of them" >&2; exit 2; }
	@echo
	@echo "  Lesson 08, step $(STEP) of 5: $(LESSON08_STEP_FILE) (docs/08-mcp-tools.md, section $(STEP))"
	@echo "  $(LESSON08_ABOUT_$(STEP))"
	@echo "  Next: $(or $(LESSON08_NEXT_$(STEP)),make lesson-08 STEP=$(shell echo $$(($(STEP) + 1))))"
	@echo
	@$(LESSON08_VENV)/bin/python $(LESSON08_STEP_FILE)

lesson-08-stack: lesson-08-images deploy/lesson08/agent-token deploy/lesson08/operator-token
	$(LESSON08_COMPOSE) up -d --wait
	@echo
	@echo "  Research agent (Compose project $(LESSON08_PROJECT)) on http://127.0.0.1:$(LESSON08_PORT), its tools over MCP  (offline model unless OPENAI_API_KEY is set)"
	@echo "  Ask:       curl -s -X POST http://127.0.0.1:$(LESSON08_PORT)/v1/research -H 'content-type: application/json' -d '{\"query\": \"Why use a multi-stage Docker build?\"}'"
	@echo "             (the first question starts the notes server's container: docker ps --filter label=lesson08.owner)"
	@echo "  Call log:  docker compose -p $(LESSON08_PROJECT) -f deploy/lesson08/compose.yaml logs gateway   (one JSON line per tool call)"
	@echo "  MCP:       make lesson-08-client   (the MCP SDK's client lists the tools), or any MCP client on http://127.0.0.1:$(LESSON08_MCP_PORT)/mcp"
	@echo "  Pins:      curl -s -H \"Authorization: Bearer \$$(cat deploy/lesson08/operator-token)\" http://127.0.0.1:$(LESSON08_MCP_PORT)/pins   (/metrics likewise)"
	@echo "  Re-pin:    .venv/lesson08/bin/python code/08_mcp_gateway.py repin notes   (the running gateway pins the server's tools again)"
	@echo "  Stop:      make lesson-08-down   (removes every container, network and volume of the lesson)"
	@echo

# The agent's bearer token for the gateway, random, made once (not in git).
deploy/lesson08/agent-token:
	@umask 077 && head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > $@

# The operator's token: /pins, /metrics and re-pinning on the gateway (not in git).
deploy/lesson08/operator-token:
	@umask 077 && head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > $@

lesson-08-down: docker-tools ## Lesson 08: remove its containers (the on-demand tool servers and sandboxes too), networks and volume
	@for label in lesson08.owner agent-sandbox.owner; do \
	  ids=$$(docker ps -aq --filter label=$$label=$(LESSON08_PROJECT)); [ -z "$$ids" ] || docker rm -f $$ids; done
	$(LESSON08_COMPOSE) down -v --remove-orphans

lesson-08-replicas: lesson-08-images deploy/lesson08/agent-token deploy/lesson08/operator-token ## Lesson 08, going further: two stateless gateway replicas behind HAProxy (MCP on 8086), pins shared in Redis; agent on 8085 (stop make lesson-08 first: same ports)
	$(LESSON08_REPLICAS_COMPOSE) up -d --wait
	@echo
	@echo "  Two gateway replicas (Compose project $(LESSON08_REPLICAS_PROJECT)) behind the edge on http://127.0.0.1:$(LESSON08_MCP_PORT)/mcp; the agent on http://127.0.0.1:$(LESSON08_PORT)"
	@echo "  Call log:  docker compose -p $(LESSON08_REPLICAS_PROJECT) -f deploy/lesson08/replicas.yaml logs gateway   (each line names its replica)"
	@echo "  Stop one:  docker stop $(LESSON08_REPLICAS_PROJECT)-gateway-1   (calls go on through the other; docker start brings it back)"
	@echo "  Remove:    make lesson-08-replicas-down"
	@echo

lesson-08-replicas-down: docker-tools ## Lesson 08, going further: remove the replicas' containers, networks and the pins volume
	$(LESSON08_REPLICAS_COMPOSE) down -v --remove-orphans

# The official MCP SDK's Client (2.x), from lesson 08's environment; code/08_mcp_client.py TOOL k=v calls one.
lesson-08-client: $(LESSON08_VENV)/.installed ## Lesson 08: list the gateway's tools with the MCP SDK's client (the gateway must be up: make lesson-08)
	MCP_URL=http://127.0.0.1:$(LESSON08_MCP_PORT)/mcp $(LESSON08_VENV)/bin/python code/08_mcp_client.py

# `make lesson-09 STEP=K` runs step K of docs/09-traces.md (code/09_stepK_*.py) on the host; steps 2
# to 4 start the viewer first (the stack's Phoenix, alone). `make lesson-09` brings up what the steps
# arrive at: lesson 03's stack exporting through a write-only ingest to the viewer.
LESSON09_STEP_FILE = $(firstword $(wildcard code/09_step$(STEP)_*.py))
LESSON09_VIEWER = http://127.0.0.1:$(VIEWER_PORT)
LESSON09_INGEST = http://127.0.0.1:$(LESSON09_INGEST_PORT)
# Where each step's spans go: the standard variable, then (step 4) where its ingest passes them on.
LESSON09_STEP_ENV = $(if $(filter 1,$(STEP)),,OTEL_EXPORTER_OTLP_ENDPOINT=$(if $(filter 4,$(STEP)),$(LESSON09_INGEST) INGEST_PORT=$(LESSON09_INGEST_PORT) VIEWER_URL=$(LESSON09_VIEWER),$(LESSON09_VIEWER)))
lesson-09: $(if $(STEP),lesson-09-step,lesson-09-stack) ## Lesson 09: traces. STEP=1..4: that step on the host (2 to 4 start the viewer, Phoenix, on 127.0.0.1:6006); alone: lesson 03's stack exporting through a write-only ingest to the viewer, returns once healthy

# What `make lesson-09 STEP=K` prints before it starts the step: where to look, what to type.
define lesson09_banner
	@echo
	@echo "  Lesson 09, step $(STEP) of 4: $(LESSON09_STEP_FILE) (docs/09-traces.md, section $(STEP))"
	@case "$(STEP)" in \
	  1) echo "  It asks the research agent one question and prints each span as it ends (offline model unless OPENAI_API_KEY is set)."; \
	     echo "  It prints what happened and exits. Next: make lesson-09 STEP=2" ;; \
	  2) echo "  The same, and the spans go over OTLP to OTEL_EXPORTER_OTLP_ENDPOINT=$(LESSON09_VIEWER), the viewer."; \
	     echo "  Then open $(LESSON09_VIEWER)/projects/UHJvamVjdDox/traces/<trace id>, the id on the invoke_agent line. Next: make lesson-09 STEP=3" ;; \
	  3) echo "  The agent behind an API on http://$(HOST):$(PORT) (Ctrl+C stops it); its spans print here and go to the viewer,"; \
	     echo "  OTEL_EXPORTER_OTLP_ENDPOINT=$(LESSON09_VIEWER). Ask it from another terminal: docs/09-traces.md, section 3." ;; \
	  4) echo "  The API on http://$(HOST):$(PORT) (Ctrl+C stops it) exports to OTEL_EXPORTER_OTLP_ENDPOINT=$(LESSON09_INGEST),"; \
	     echo "  the write-only ingest, which passes each export to the viewer, VIEWER_URL=$(LESSON09_VIEWER)." ;; \
	esac
	@echo
endef

# A step that does not exist is refused before anything is built or started.
lesson-09-step-check:
	@if [ -z "$(LESSON09_STEP_FILE)" ]; then echo "STEP=$(STEP): lesson 09's steps are 1 to 4 (docs/09-traces.md)" >&2; exit 2; fi

lesson-09-step: lesson-09-step-check $(VENV)/.lessons $(if $(filter 2 3 4,$(STEP)),lesson-09-viewer)
	$(lesson09_banner)
	@$(LESSON09_STEP_ENV) $(PY) $(LESSON09_STEP_FILE)

# The banner alone: tests/lesson_09/test_steps.py compares it with the doc.
lesson-09-banner: lesson-09-step-check
	$(lesson09_banner)

# The stack's viewer alone, for steps 2 to 4 (built the first time; kept as it is when it runs).
lesson-09-viewer: docker-tools offline-images
	$(LESSON09_COMPOSE) up -d --wait viewer

lesson-09-stack: docker-tools offline-images
	$(LESSON09_COMPOSE) up --build -d --wait
	@echo
	@echo "  Trace viewer (Arize Phoenix):  http://127.0.0.1:$(VIEWER_PORT)"
	@echo "  Research agent behind the edge: http://127.0.0.1:$(LESSON09_PORT)"
	@echo "  Ask:   curl -si -X POST http://127.0.0.1:$(LESSON09_PORT)/v1/research -H 'content-type: application/json' -d '{\"query\": \"Why use a multi-stage Docker build?\"}'"
	@echo "  The answer's header traceresponse: 00-<trace id>-<span id>-<flags> names its trace: open"
	@echo "  http://127.0.0.1:$(VIEWER_PORT)/projects/UHJvamVjdDox/traces/<trace id>  (or the viewer's Traces tab): where did the time go?"
	@echo "  Stop:  make lesson-09-down   (removes the containers, networks and volume)"
	@echo

# Lesson 09's images (the agent, the viewer and its ingest) built ahead, as `make lesson-09` builds them.
lesson-09-images: docker-tools offline-images
	$(LESSON09_COMPOSE) build

lesson-09-down: docker-tools ## Lesson 09: remove its containers (the viewer and its ingest too), networks and volume
	$(LESSON09_COMPOSE) down -v --remove-orphans

# `make lesson-10 STEP=K` runs step K of docs/10-durable-runs.md (code/10_stepK_*.py) on the host;
# `make lesson-10` brings up the production app the steps arrive at, in Compose (Going further).
LESSON10_STEP_FILE = $(firstword $(wildcard code/10_step$(STEP)_*.py))
lesson-10: $(if $(STEP),lesson-10-step,lesson-10-stack) ## Lesson 10: durable runs, a person approves run_python. STEP=1..5: that step on the host; alone: the production app in Compose, edge on 127.0.0.1:8110 (LESSON10_PORT), returns once healthy

# What a step needs that make cannot build, checked before anything is built.
lesson-10-step-check:
	@if [ -z "$(LESSON10_STEP_FILE)" ]; then echo "STEP=$(STEP): lesson 10's steps are 1 to 5 (docs/10-durable-runs.md)" >&2; exit 2; fi
	@if [ -z "$$DATABASE_URL" ]; then \
	  echo "Step $(STEP) keeps its runs in PostgreSQL: start one and set DATABASE_URL (docs/10-durable-runs.md, Before you start), e.g." >&2; \
	  echo "  docker run -d --name lesson10-postgres -e POSTGRES_PASSWORD=lesson10 -p 127.0.0.1:5432:5432 postgres:15" >&2; \
	  echo "  export DATABASE_URL=postgresql://postgres:lesson10@127.0.0.1:5432/postgres" >&2; exit 2; fi

# What `make lesson-10 STEP=K` prints before it starts the step: where to look, what to type.
define lesson10_banner
	@echo
	@echo "  Lesson 10, step $(STEP): $(LESSON10_STEP_FILE)  (offline model unless OPENAI_API_KEY is set)"
	@case "$(STEP)" in \
	  1) echo "  The run stops before run_python: y approves the call, anything else rejects it. Or kill it"; \
	     echo "  from another terminal instead of answering:  kill -9 \$$(pgrep -f 10_step1_interrupt)"; \
	     echo "  then run make lesson-10 STEP=1 again: the run resumes from its checkpoint in PostgreSQL." ;; \
	  5) echo "  A replica on http://$(HOST):$(PORT)  (Ctrl+C stops it). Start a second one in another terminal:"; \
	     echo "    PORT=8001 make lesson-10 STEP=5"; \
	     echo "  Then docs/10-durable-runs.md, step 5: a run, the replica that takes it killed, the other goes on." ;; \
	  *) echo "  API on http://$(HOST):$(PORT)  (Swagger UI: /docs; Ctrl+C stops it)"; \
	     echo "  Start a run:  curl -s -X POST http://$(HOST):$(PORT)/v1/runs -H 'content-type: application/json' -d '{\"query\": \"What is 2**100?\"}'"; \
	     echo "  Then docs/10-durable-runs.md, step $(STEP): its state, your decision, the answer." ;; \
	esac
	@echo
endef

lesson-10-step: lesson-10-step-check $(VENV)/.lessons sandbox-image
	$(lesson10_banner)
	@$(PY) $(LESSON10_STEP_FILE)

# The banner alone: tests/lesson_10/test_steps.py compares it with the doc.
lesson-10-banner: lesson-10-step-check
	$(lesson10_banner)

lesson-10-stack: lesson-10-image sandbox-image deploy/lesson10/.env
	$(LESSON10_COMPOSE) up -d --wait
	@echo
	@echo "  Durable runs (Compose project lesson10: edge, agent1, agent2, postgres, docker-guard) on http://127.0.0.1:$(LESSON10_PORT)  (offline model unless OPENAI_API_KEY is set)"
	@echo "  Approvals page: http://127.0.0.1:$(LESSON10_PORT)/approvals   (ask a question there, or paste the owner_token of a run you started with curl)"
	@echo "  Start a run:    curl -s -X POST http://127.0.0.1:$(LESSON10_PORT)/v1/runs -H 'Content-Type: application/json' -d '{\"query\": \"What is 2**100?\"}'"
	@echo "  Kill replicas:  docker compose -p lesson10 -f deploy/lesson10/compose.yaml kill -s SIGKILL agent1 agent2"
	@echo "  Stop:           make lesson-10-down   (removes the project's containers, networks, Postgres volume and sandboxes)"
	@echo

# Two random passwords the first time (the superuser's and the agent's), for Compose's ${...}.
deploy/lesson10/.env:
	@umask 077 && printf 'LESSON10_POSTGRES_PASSWORD=%s\nLESSON10_AGENT_PASSWORD=%s\n' \
	  "$$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')" "$$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')" > $@

lesson-10-down: docker-tools ## Lesson 10: remove the Compose project lesson10 (containers, networks, Postgres volume) and any sandbox a lesson 10 process left; the steps' own database: docker rm -f lesson10-postgres
	$(LESSON10_COMPOSE) down -v --remove-orphans
	@docker ps -aq --filter label=agent-sandbox.owner=lesson10 | xargs -r docker rm -f >/dev/null

durable-test: lesson-10-image $(VENV)/.installed ## Lesson 10 in containers: kill -9 a replica while a run waits, during a model call and while run_python runs; two replicas racing a decision; the approvals page in headless Chromium; down leaves nothing
	@scripts/ensure-command.sh chromium chromium "the approvals page is checked in a real browser"
	$(PY) -m pytest -m container tests/lesson_10 -v $(PYTEST_ARGS)

# `make lesson-11 STEP=K` runs step K of docs/11-evals.md (code/11_stepK_*.py); without STEP, the
# gate the steps arrive at: make evals. Evals are tests: lesson 11 installs the test tools' lock.
LESSON11_STEP = $(wildcard code/11_step$(STEP)_*.py)
lesson-11: $(VENV)/.installed $(if $(STEP),,evals) ## Lesson 11: the agent's evals as a gate; STEP=1..4 runs that step of the lesson, alone make evals
ifneq ($(STEP),)
	@test -n "$(LESSON11_STEP)" || { echo "Lesson 11 has steps 1 to 4: STEP=$(STEP) is none of them" >&2; exit 2; }
	@$(PY) $(LESSON11_STEP)
endif

# The evals: offline by default (each case once); with OPENAI_API_KEY each case RUNS times (3), with
# pass rates compared to code/lesson11/baselines/<model>.json; PHOENIX_URL=http://127.0.0.1:6006
# reads the spans back from lesson 09's viewer and logs the results there as an experiment.
EVALS_ARGS = $(if $(RUNS),--runs $(RUNS)) $(if $(PHOENIX_URL),--phoenix $(PHOENIX_URL))
evals: $(VENV)/.installed ## Lesson 11: the dataset through the research agent, read from its traces: a table, a report (evals-report/index.html), exit 1 when a required case fails
	@$(PY) -m lesson11 $(EVALS_ARGS)

evals-baseline: $(VENV)/.installed ## Lesson 11: run the evals and write their pass rates as the baseline for this model (code/lesson11/baselines/)
	@$(PY) -m lesson11 --write-baseline $(EVALS_ARGS)

evals-phoenix-test: docker-tools offline-images $(VENV)/.installed ## Lesson 11 with lesson 09's viewer: Phoenix (docker/phoenix) in a container, the evaluators reading the spans back from it, the results an experiment there; a broken agent read from it fails the gate
	$(PY) -m pytest -m container tests/lesson_11/test_phoenix.py -v

evals-screenshot: $(VENV)/.installed ## Lesson 11: make evals' report in headless Chromium, saved to docs/images/11-evals-report.png
	@scripts/ensure-command.sh chromium chromium "the report is opened in a real browser"
	SCREENSHOT=docs/images/11-evals-report.png $(PY) -m pytest -m container tests/lesson_11/test_report_browser.py -v

lesson-07-trace: docker-tools ## Lesson 07: follow every event through the topics (TRACE_ALL=1: from the start)
	$(LESSON07_COMPOSE) exec -e TRACE_ALL=$(TRACE_ALL) gateway python 07_event_agents.py trace

# `make lesson-12 STEP=K` runs step K of docs/12-agents-over-a2a.md (code/12_stepK_*.py) on the
# host, a server that a client (code/12_client.py) talks to; `make lesson-12` brings up the stack.
LESSON12_STEP_FILE = $(firstword $(wildcard code/12_step$(STEP)_*.py))
lesson-12: $(if $(STEP),lesson-12-step,lesson-12-stack) ## Lesson 12: the research agent over A2A. STEP=1..4: that step on the host; alone: edge on 127.0.0.1:8120 (LESSON12_PORT), two replicas, Postgres, a client agent on 8121; returns once healthy

ifneq ($(filter lesson-12,$(MAKECMDGOALS)),)
ifneq ($(STEP),)
ifeq ($(LESSON12_STEP_FILE),)
$(error make lesson-12: there is no step "$(STEP)"; the steps are STEP=1 to STEP=4)
endif
endif
endif

lesson-12-step-check:
	@if [ "$(STEP)" -ge 3 ] && [ -z "$$DATABASE_URL" ]; then \
	  echo "Step $(STEP) keeps its tasks in PostgreSQL: start one and set DATABASE_URL (docs/12-agents-over-a2a.md, Before you start)" >&2; exit 2; fi

lesson-12-step: lesson-12-step-check $(VENV)/.lessons $(if $(filter 1,$(STEP)),,sandbox-image) $(if $(filter 4,$(STEP)),deploy/lesson12/callers)
	@echo
	@echo "  Lesson 12, step $(STEP): $(LESSON12_STEP_FILE) (docs/12-agents-over-a2a.md, section $(STEP))  (offline model unless OPENAI_API_KEY is set)"
	@echo "  A2A server on http://$(HOST):$(PORT)  (its card: /.well-known/agent-card.json; Ctrl+C stops it)"
	@echo "  Ask it, from another terminal:  .venv/bin/python code/12_client.py ask 'Why use a multi-stage Docker build?'"
	@echo
	@$(PY) $(LESSON12_STEP_FILE)

lesson-12-stack: lesson-12-image sandbox-image deploy/lesson12/.env deploy/lesson12/callers
	$(LESSON12_COMPOSE) up -d --wait
	@echo
	@echo "  The research agent over A2A (Compose project lesson12: edge, agent1, agent2, postgres, planner, docker-guard)  (offline model unless OPENAI_API_KEY is set)"
	@echo "  Its card:      curl -s http://127.0.0.1:$(LESSON12_PORT)/.well-known/agent-card.json"
	@echo "  Ask it:        A2A_URL=http://127.0.0.1:$(LESSON12_PORT) A2A_TOKEN=\$$(cat deploy/lesson12/planner-token) .venv/bin/python code/12_client.py ask 'What is 2**100?'"
	@echo "  Client agent:  curl -sN -X POST http://127.0.0.1:$(LESSON12_PLANNER_PORT)/v1/questions -H 'content-type: application/json' -d '{\"question\": \"Why use a multi-stage Docker build?\"}'"
	@echo "  Kill replicas: $(LESSON12_COMPOSE) kill -s SIGKILL agent1 agent2"
	@echo "  Stop:          make lesson-12-down   (removes the containers, networks, volume and sandboxes)"
	@echo

# Two random passwords the first time (the superuser's and the agent's), for Compose's ${...}.
deploy/lesson12/.env:
	@umask 077 && printf 'LESSON12_POSTGRES_PASSWORD=%s\nLESSON12_AGENT_PASSWORD=%s\n' \
	  "$$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')" "$$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')" > $@

# The A2A server's callers, "name token" a line (random, not in git): the client agent, planner,
# whose token is also in planner-token, and bob, another caller. Readable by the containers' users.
deploy/lesson12/callers:
	@umask 022 && planner=$$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n') && \
	  printf 'planner %s\nbob %s\n' "$$planner" "$$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')" > $@ && \
	  printf '%s\n' "$$planner" > deploy/lesson12/planner-token

lesson-12-down: docker-tools ## Lesson 12: remove its containers, networks, Postgres volume and any sandbox it left
	$(LESSON12_COMPOSE) down -v --remove-orphans
	@docker ps -aq --filter label=agent-sandbox.owner=lesson12 | xargs -r docker rm -f >/dev/null

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

smoke: build $(VENV)/.installed ## Run each image, check it (tests/lesson_03/test_container.py), docker stop it mid-stream
	CONTAINER_IMAGES="$(addsuffix $(TAG_SUFFIX),$(addprefix research-agent:,$(IMAGES)))" $(PY) -m pytest -m container tests/lesson_03/test_container.py tests/lesson_03/test_container_shutdown.py -v $(PYTEST_ARGS)

compose-test: docker-tools offline-images $(VENV)/.installed ## Compose v1 and v2: up (offline) behind the edge, cache hit, stop mid-answer, down -v; header and slow-client attacks and Redis stopped under v2
	@scripts/ensure-command.sh docker-compose docker-compose "the test runs Compose v1 as well as v2"
	$(PY) -m pytest -m container tests/lesson_03/test_compose.py -v $(PYTEST_ARGS)

sandbox-test: sandbox-image $(VENV)/.installed ## The hostile suite under every runtime the daemon has (runc, gVisor), and egress attacks through the proxy
	$(PY) -m pytest -m container tests/lesson_04 tests/lesson_02/test_sandbox_tool.py tests/repo/test_docs.py -v $(PYTEST_ARGS)

traces-test: docker-tools offline-images lesson-05-image sandbox-image $(VENV)/.installed ## Lesson 09 in containers: a question through the edge is one trace in Phoenix, found by headless Chromium (screenshot); step 4's commands with Phoenix behind its ingest; a caller's traceparent kept only when trusted; the agent's and lesson 05's worker containers can send spans, not read or delete them; down leaves nothing
	@scripts/ensure-command.sh chromium chromium "the viewer is checked in a real browser"
	WORKER_IMAGE=$(LESSON05_IMAGE) $(PY) -m pytest -m container tests/lesson_09 -v $(PYTEST_ARGS)

variations-test: lesson-05-image $(VENV)/.installed ## Lesson 05 with real containers: its steps as the doc runs them, the last against the production API, and headless Chromium on its page (installs chromium)
	@scripts/ensure-command.sh chromium chromium
	WORKER_IMAGE=$(LESSON05_IMAGE) $(PY) -m pytest -m container tests/lesson_05 -v $(PYTEST_ARGS)

variations-screenshot: lesson-05-image $(VENV)/.installed ## Lesson 05: the browser test, saving the page to docs/images/
	@scripts/ensure-command.sh chromium chromium
	WORKER_IMAGE=$(LESSON05_IMAGE) SCREENSHOT=docs/images/05-variations.png $(PY) -m pytest -m container tests/lesson_05/test_browser.py -v

swarm-test: swarm-images $(VENV)/.installed ## make lesson-06 for real: replicas, request ids, shared cache, SSE, rollback, lesson-06-down
	$(PY) -m pytest -m container tests/lesson_06/test_swarm.py -v $(PYTEST_ARGS)

pubsub-test: lesson-07-image $(VENV)/.installed ## Lesson 07 in containers: specialist killed twice under load, Redis restarted, dead letters, counts exact, down -v
	$(PY) -m pytest -m container tests/lesson_07 -v $(PYTEST_ARGS)

mcp-test: lesson-08-images $(VENV)/.installed ## Lesson 08 in containers: on-demand tool servers, run_python's sandbox, limits, secrets, Docker guards, the challenge, Compose v1 and v2, two replicas with one stopped then killed under a burst, down leaves nothing
	@scripts/ensure-command.sh docker-compose docker-compose "the test runs Compose v1 as well as v2"
	$(PY) -m pytest -m container tests/lesson_08 -v $(PYTEST_ARGS)

a2a-test: lesson-12-image sandbox-image $(VENV)/.installed ## Lesson 12 in containers: the A2A SDK's client on both bindings through the edge, kill -9 of both replicas while a task waits and while one streams, the effect once, owners, the client agent; down leaves nothing
	$(PY) -m pytest -m container tests/lesson_12 -v $(PYTEST_ARGS)

# The A2A project's compatibility kit against lesson 12 (tests/lesson_12/compatibility_kit.py): a checkout
# of a2aproject/a2a-tck's 1.0 line in A2A_TCK (never committed here), installed into A2A_TCK/.venv.
A2A_TCK ?=
a2a-tck: lesson-12-image sandbox-image $(VENV)/.installed ## Lesson 12: the A2A compatibility kit (A2A_TCK=its checkout): its card requirements against make lesson-12, its MUST level against the lesson's composition serving the kit's executor
	@test -n "$(A2A_TCK)" -a -f "$(A2A_TCK)/run_tck.py" || { echo "A2A_TCK=DIR: a checkout of a2aproject/a2a-tck, branch 1.0-dev" >&2; exit 2; }
	@test -x "$(A2A_TCK)/.venv/bin/python" || { $(PYTHON) -m venv --without-pip $(A2A_TCK)/.venv && \
	  cd $(A2A_TCK) && UV_NATIVE_TLS=1 UV_PYTHON_DOWNLOADS=never $(CURDIR)/$(VENV)/bin/uv pip install --quiet --python .venv/bin/python -e .; }
	$(PY) -m tests.lesson_12.compatibility_kit --kit $(A2A_TCK) --kit-python $(A2A_TCK)/.venv/bin/python

##@ Benchmarks

bench-api: $(VENV)/.installed ## Requests/s, latency and CPU per request of lesson 01's five steps and production version vs bare FastAPI
	@scripts/ensure-command.sh wrk wrk "it generates the load" "macOS: brew install wrk"
	BENCH_COMMAND="make $@" $(PY) -m bench.api

bench-tracing: $(VENV)/.installed ## CPU per request of the research agent: no tracing code vs tracing off vs on (batch export to a local collector)
	BENCH_COMMAND="make $@" $(PY) -m bench.tracing

bench-durable: $(VENV)/.installed test-tools ## Lesson 10: the Postgres checkpointer vs none (target <= 1.15x), restart -> resumed event p50/p99, 1,000 waiting runs' memory and connections
	BENCH_COMMAND="make $@" $(PY) -m bench.durable

bench-evals: $(VENV)/.installed ## Lesson 11: make evals' time, and the share of it that starts the suite (imports, apps) against running the cases
	BENCH_COMMAND="make $@" $(PY) -m bench.evals

bench-first-answer: ## Fresh clone -> `make lesson-01` -> first answer, uv against pip (a few minutes)
	@BENCH_COMMAND="make $@" $(PYTHON) -m bench.first_answer

bench-sse-proxy: $(VENV)/.installed ## Time to first SSE token, direct vs nginx (gzip) with/without X-Accel-Buffering
	@scripts/ensure-command.sh nginx nginx "the benchmark puts nginx in front of the agent" "macOS: brew install nginx"
	BENCH_COMMAND="make $@" $(PY) -m bench.sse_proxy

bench-images: docker-tools offline-images $(VENV)/.installed ## Cold build, code-only rebuild, size, start time per Dockerfile
	BENCH_COMMAND="make $@" $(PY) -m bench.images

bench-start: build $(VENV)/.installed ## docker run -> /ready and -> healthy for the built images (no rebuild)
	BENCH_COMMAND="make $@" $(PY) -m bench.images --start-only

bench-start-host: IMAGES = optimized
bench-start-host: build $(VENV)/.installed ## The optimized image vs `python main.py` on the host: start->ready, first request, imports
	BENCH_COMMAND="make $@" $(PY) -m bench.images --vs-host

sizes: build ## Table: image sizes against their floor, and where the optimized image's bytes went
	@$(PYTHON) scripts/image_sizes.py

# The images lesson 03 builds, and lesson 04's proxy, are built first; the others are read when
# built (make images builds them all). SBOM_CHART=docs/images/03-sbom.png redraws lesson 03's picture.
sbom: build $(VENV)/.installed ## CycloneDX SBOMs of every image built (.build/sbom/), package counts, what the optimized image dropped
	DOCKER_BUILDKIT=1 docker build -q -t egress-proxy:squid docker/egress-proxy >/dev/null
	$(PY) -m scripts.sbom $(if $(SBOM_CHART),--chart $(SBOM_CHART))

context-size: docker-tools ## What the build contexts send to Docker once .dockerignore has filtered them
	@scripts/context-size.sh

bench-sandbox: sandbox-image $(VENV)/.installed ## Fresh and pooled sandbox runs vs a bare `docker run --rm` (and exec); runsc vs runc; egress proxy vs direct
	BENCH_COMMAND="make $@" $(PY) -m bench.sandbox

bench-variations: lesson-05-image $(VENV)/.installed ## N = 1, 2, 4, 8 variations in containers vs in one process
	BENCH_COMMAND="make $@" WORKER_IMAGE=$(LESSON05_IMAGE) $(PY) -m bench.variations

bench-scaleout: swarm-images $(VENV)/.installed ## Rolling update and docker stop under load (target: 0 failed), 1 vs 3 replicas
	@scripts/ensure-command.sh wrk wrk
	BENCH_COMMAND="make $@" $(PY) -m bench.scaleout

bench-pubsub: lesson-07-image $(VENV)/.installed ## Lesson 07: questions/s and p50/p99 with 1 and 3 concepts consumers, and where the time goes
	BENCH_COMMAND="make $@" $(PY) -m bench.pubsub

bench-mcp: lesson-08-images $(VENV)/.installed $(LESSON08_VENV)/.installed ## Lesson 08: research over MCP vs in-process (target <= 1.6x), on-demand start vs docker run, gateway overhead p50/p99 for a client of each protocol era (target <= 2 ms)
	BENCH_COMMAND="make $@" $(PY) -m bench.mcp

bench-a2a: $(VENV)/.installed test-tools ## Lesson 12: a research answer through A2A (card cached, task in PostgreSQL) vs the same agent in process (target <= 1.3x), the protocol's overhead per message p50
	BENCH_COMMAND="make $@" $(PY) -m bench.a2a

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

lesson-05-image: IMAGES = optimized
lesson-05-image: build
	docker tag research-agent:optimized$(TAG_SUFFIX) $(LESSON05_IMAGE)

# Lesson 07's image: the research agent's optimized image (the pinned lock) plus the lesson's files.
lesson-07-image: docker-tools offline-images
	@scripts/build-images.sh optimized
	DOCKER_BUILDKIT=1 docker build -q -f docker/lesson07/Dockerfile --build-arg BASE_IMAGE=research-agent:optimized$(TAG_SUFFIX) -t $(LESSON07_IMAGE) .

# Lesson 10's image: the research agent's optimized image (its lock has the Postgres checkpointer) plus
# the lesson's files.
lesson-10-image: docker-tools offline-images
	@scripts/offline-images.sh postgres:15
	@scripts/build-images.sh optimized
	DOCKER_BUILDKIT=1 docker build -q -f docker/lesson10/Dockerfile --build-arg BASE_IMAGE=research-agent:optimized$(TAG_SUFFIX) -t $(LESSON10_IMAGE) .

# Lesson 12's image: the research agent's optimized image plus the A2A SDK (its own lock) and the
# lesson's files.
lesson-12-image: docker-tools offline-images
	@scripts/offline-images.sh postgres:15
	@scripts/build-images.sh optimized
	DOCKER_BUILDKIT=1 docker build -q -f docker/lesson12/Dockerfile --build-arg BASE_IMAGE=research-agent:optimized$(TAG_SUFFIX) -t $(LESSON12_IMAGE) .

# Lesson 08's images: the agent (the research agent's optimized image under its own tag, so a rebuild
# elsewhere cannot change it under the lesson), the notes and python servers and the gateway (one
# small lock), and lesson 04's sandbox image, which the python server runs code in.
lesson-08-images: docker-tools offline-images sandbox-image
	@TAG_SUFFIX=-lesson08 scripts/build-images.sh optimized
	DOCKER_BUILDKIT=1 docker build -q -f docker/lesson08/Dockerfile --target notes -t lesson08-notes .
	DOCKER_BUILDKIT=1 docker build -q -f docker/lesson08/Dockerfile --target python -t lesson08-python .
	DOCKER_BUILDKIT=1 docker build -q -f docker/lesson08/Dockerfile --target gateway -t lesson08-gateway .

swarm-images: docker-tools
	@scripts/offline-images.sh python:3.11-slim redis:7 haproxy:2.6
	@scripts/build-images.sh optimized

##@ Setup

# `make help` prints the targets with a `## description`, under the `##@ Group` line above them.
help: ## List the commands of the course, by group
	@awk 'BEGIN {FS = ":.*## "; printf "Containerizing AI Agents: make TARGET\n"} \
	  /^##@ / {printf "\n\033[1m%s\033[0m\n", substr($$0, 5)} \
	  /^[a-zA-Z0-9_-]+:.*## / {printf "  \033[36m%-22s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

# Two hashed locks: requirements.txt, what the lessons run (`make lesson-01` installs only it), and
# requirements-dev.txt, the same packages at the same versions plus the test, benchmark and lint tools.
# Either step then installs the course's own packages, editable (scripts/install-venv.sh): the research
# agent (research-agent/pyproject.toml) and the support and lesson packages (pyproject.toml).
PACKAGES := pyproject.toml research-agent/pyproject.toml research-agent/build-requirements.txt
$(VENV)/.lessons: requirements.txt $(PACKAGES)
	@scripts/install-venv.sh $(PYTHON) $(VENV) requirements.txt
	@touch $@

$(VENV)/.installed: requirements-dev.txt requirements.txt $(PACKAGES)
	@scripts/install-venv.sh $(PYTHON) $(VENV) requirements-dev.txt
	@touch $@ $(VENV)/.lessons

# Lesson 08 on the host: the image's lock (mcp 2.x, fastmcp 4.x) plus pytest and OpenTelemetry's SDK, with
# the course's packages installed editable as in .venv. Its steps, its servers in `make test` and
# `make bench-mcp`, and the mcp 2.x and FastMCP 4 clients the tests speak to them with run from it.
$(LESSON08_VENV)/.installed: docker/lesson08/requirements-host.txt research-agent/build-requirements.txt $(PACKAGES) | $(VENV)/.lessons
	@echo "==> $(LESSON08_VENV): lesson 08's servers and clients (mcp 2.x, fastmcp 4.x)"
	@$(PYTHON) -m venv --without-pip --clear $(LESSON08_VENV)
	@UV_NATIVE_TLS=1 UV_PYTHON_DOWNLOADS=never $(VENV)/bin/uv pip install --quiet \
	  --python $(LESSON08_VENV)/bin/python --compile-bytecode --require-hashes \
	  -r docker/lesson08/requirements-host.txt -r research-agent/build-requirements.txt
	@UV_NATIVE_TLS=1 UV_PYTHON_DOWNLOADS=never $(VENV)/bin/uv pip install --quiet \
	  --python $(LESSON08_VENV)/bin/python --no-deps --no-build-isolation -e research-agent -e .
	@touch $@

# checkov alone, from its own hashed lock (scripts/config_checks.py finds it here).
$(CHECKOV_VENV)/.installed: requirements-checkov.txt | $(VENV)/.lessons
	@echo "==> $(CHECKOV_VENV): checkov, for make lint"
	@$(PYTHON) -m venv --without-pip --clear $(CHECKOV_VENV)
	@UV_NATIVE_TLS=1 UV_PYTHON_DOWNLOADS=never $(VENV)/bin/uv pip install --quiet \
	  --python $(CHECKOV_VENV)/bin/python --compile-bytecode --require-hashes -r requirements-checkov.txt
	@touch $@

install: $(VENV)/.installed $(CHECKOV_VENV)/.installed ## Create .venv and install the pinned dependencies of the lessons and the tests (with uv; INSTALLER=pip for pip)

lock: $(VENV)/.installed ## Re-pin research-agent/requirements.txt, requirements-dev.txt and requirements.txt after editing a .in file
	$(VENV)/bin/uv pip compile --quiet --generate-hashes -p 3.11 research-agent/requirements.in -o research-agent/requirements.txt
	$(VENV)/bin/uv pip compile --quiet --generate-hashes -p 3.11 research-agent/build-requirements.in -o research-agent/build-requirements.txt
	$(VENV)/bin/uv pip compile --quiet --generate-hashes -p 3.11 requirements-dev.in -o requirements-dev.txt
	$(VENV)/bin/uv pip compile --quiet --generate-hashes -p 3.11 requirements.in -c requirements-dev.txt -o requirements.txt
	$(VENV)/bin/uv pip compile --quiet --generate-hashes -p 3.11 docker/lesson08/requirements.in -o docker/lesson08/requirements.txt
	$(VENV)/bin/uv pip compile --quiet --generate-hashes -p 3.11 docker/lesson08/requirements-host.in -c docker/lesson08/requirements.txt -o docker/lesson08/requirements-host.txt
	$(VENV)/bin/uv pip compile --quiet --generate-hashes -p 3.11 docker/phoenix/requirements.in -o docker/phoenix/requirements.txt
	$(VENV)/bin/uv pip compile --quiet --generate-hashes -p 3.11 docker/lesson12/requirements.in -c requirements-dev.txt -o docker/lesson12/requirements.txt
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
