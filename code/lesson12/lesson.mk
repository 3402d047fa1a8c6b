# Lesson 12, agents over A2A: its make targets and variables (the root Makefile includes this file).

##@ Lesson 12: agents over A2A
.PHONY: lesson-12 lesson-12-step-check lesson-12-step lesson-12-stack lesson-12-down a2a-test
.PHONY: a2a-tck bench-a2a lesson-12-image

# Lesson 12: the research agent over A2A, edge on 8120 (LESSON12_PORT), two replicas, Postgres, a
# client agent on 8121 and lesson 08's Docker guard, as the Compose project lesson12.
LESSON12_PORT ?= 8120
LESSON12_PLANNER_PORT ?= 8121
LESSON12_IMAGE ?= lesson-12-agent
export LESSON12_PORT LESSON12_PLANNER_PORT LESSON12_IMAGE
# Its callers' tokens, made once into a folder only you can enter (not in git).
LESSON12_SECRETS ?= $(CURDIR)/code/lesson12/secrets
export LESSON12_SECRETS
LESSON12_COMPOSE = DOCKER_GID=$(DOCKER_GID) docker compose -p lesson12 -f code/lesson12/compose.yaml

# `make lesson-12 STEP=K` runs step K of docs/12-agents-over-a2a.md (code/lesson12/stepK_*.py) on the
# host, a server that a client (code/lesson12/client.py) talks to; `make lesson-12` brings up the stack.
LESSON12_STEP_FILE = $(call step_file,12)
lesson-12: $(if $(STEP),lesson-12-step,lesson-12-stack) ## Lesson 12: the research agent over A2A. STEP=1..4: that step on the host; alone: edge on 127.0.0.1:8120 (LESSON12_PORT), two replicas, Postgres, a client agent on 8121; returns once healthy

lesson-12-step-check:
	@if [ "$(STEP)" -ge 3 ] && [ -z "$$DATABASE_URL" ]; then \
	  echo "Step $(STEP) keeps its tasks in PostgreSQL: start one and set DATABASE_URL (docs/12-agents-over-a2a.md, Before you start)" >&2; exit 2; fi

lesson-12-step: lesson-12-step-check $(VENV)/.lessons $(if $(filter 1,$(STEP)),,sandbox-image) $(if $(filter 4,$(STEP)),$(LESSON12_SECRETS)/callers)
	@echo
	@echo "  Lesson 12, step $(STEP): $(LESSON12_STEP_FILE) (docs/12-agents-over-a2a.md, $(if $(filter 4,$(STEP)),Going further: Owners,section $(STEP)))  (offline model unless OPENAI_API_KEY is set)"
	@echo "  A2A server on http://$(HOST):$(PORT)  (its card: /.well-known/agent-card.json; Ctrl+C stops it)"
	@echo "  Ask it, from another terminal:  .venv/bin/python -m lesson12.client ask 'Why use a multi-stage Docker build?'"
	@echo
	@$(PY) -m $(call step_module,12)

lesson-12-stack: lesson-12-image sandbox-image code/lesson12/.env $(LESSON12_SECRETS)/callers
	$(LESSON12_COMPOSE) up -d --wait
	@echo
	@echo "  The research agent over A2A (Compose project lesson12: edge, agent1, agent2, postgres, planner, docker-guard)  (offline model unless OPENAI_API_KEY is set)"
	@echo "  Its card:      curl -s http://127.0.0.1:$(LESSON12_PORT)/.well-known/agent-card.json"
	@echo "  Ask it:        A2A_URL=http://127.0.0.1:$(LESSON12_PORT) A2A_TOKEN=\$$(cat code/lesson12/secrets/planner-token) .venv/bin/python -m lesson12.client ask 'What is 2**100?'"
	@echo "  Client agent:  curl -sN -X POST http://127.0.0.1:$(LESSON12_PLANNER_PORT)/v1/questions -H 'content-type: application/json' -d '{\"question\": \"Why use a multi-stage Docker build?\"}'"
	@echo "  Kill replicas: $(LESSON12_COMPOSE) kill -s SIGKILL agent1 agent2"
	@echo "  Stop:          make lesson-12-down   (removes the containers, networks, volume and sandboxes)"
	@echo

# Two random passwords the first time (the superuser's and the agent's), for Compose's ${...}.
code/lesson12/.env:
	@umask 077 && printf 'LESSON12_POSTGRES_PASSWORD=%s\nLESSON12_AGENT_PASSWORD=%s\n' \
	  "$$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')" "$$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')" > $@

# The A2A server's callers, "name token" a line (random, not in git): the client agent, planner,
# whose token is also in planner-token, and bob, another caller. In a folder only you can enter
# (0700, as lesson 07's); the files in it are readable by the containers' users through their mounts.
$(LESSON12_SECRETS)/callers:
	@mkdir -p $(LESSON12_SECRETS) && chmod 700 $(LESSON12_SECRETS) && \
	  umask 022 && planner=$$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n') && \
	  printf 'planner %s\nbob %s\n' "$$planner" "$$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')" > $@ && \
	  printf '%s\n' "$$planner" > $(LESSON12_SECRETS)/planner-token

lesson-12-down: docker-tools ## Lesson 12: remove its containers, networks, Postgres volume and any sandbox it left
	$(LESSON12_COMPOSE) down -v --remove-orphans
	@docker ps -aq --filter label=agent-sandbox.owner=lesson12 | xargs -r docker rm -f >/dev/null

a2a-test: lesson-12-image sandbox-image test-tools $(VENV)/.installed ## Lesson 12 in containers: the A2A SDK's client on both bindings through the edge, kill -9 of both replicas while a task waits and while one streams, the effect once, owners, the client agent; down leaves nothing
	$(PY) -m pytest -m container tests/lesson_12 -v $(PYTEST_ARGS)

# The A2A project's compatibility kit against lesson 12 (tests/lesson_12/compatibility_kit.py): a checkout
# of a2aproject/a2a-tck's 1.0 line in A2A_TCK (never committed here), installed into A2A_TCK/.venv.
A2A_TCK ?=
a2a-tck: lesson-12-image sandbox-image $(VENV)/.installed ## Lesson 12: the A2A compatibility kit (A2A_TCK=its checkout): its card requirements against make lesson-12, its MUST level against the lesson's composition serving the kit's executor
	@test -n "$(A2A_TCK)" -a -f "$(A2A_TCK)/run_tck.py" || { echo "A2A_TCK=DIR: a checkout of a2aproject/a2a-tck, branch 1.0-dev" >&2; exit 2; }
	@test -x "$(A2A_TCK)/.venv/bin/python" || { $(PYTHON) -m venv --without-pip $(A2A_TCK)/.venv && \
	  cd $(A2A_TCK) && UV_NATIVE_TLS=1 UV_PYTHON_DOWNLOADS=never $(CURDIR)/$(VENV)/bin/uv pip install --quiet --python .venv/bin/python -e .; }
	$(PY) -m tests.lesson_12.compatibility_kit --kit $(A2A_TCK) --kit-python $(A2A_TCK)/.venv/bin/python

bench-a2a: $(VENV)/.installed test-tools ## Lesson 12: a research answer through A2A (card cached, task in PostgreSQL) vs the same agent in process (target <= 1.3x), the protocol's overhead per message p50
	BENCH_COMMAND="make $@" $(PY) -m bench.a2a

# Lesson 12's image: the research agent's optimized image plus the A2A SDK (its own lock) and the
# lesson's files.
lesson-12-image: docker-tools offline-images
	@scripts/offline-images.sh postgres:15
	@scripts/build-images.sh optimized
	DOCKER_BUILDKIT=1 docker build -q -f code/lesson12/Dockerfile --build-arg BASE_IMAGE=research-agent:optimized$(TAG_SUFFIX) -t $(LESSON12_IMAGE) .
