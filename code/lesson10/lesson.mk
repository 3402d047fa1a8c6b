# Lesson 10, durable runs: its make targets and variables (the root Makefile includes this file).

##@ Lesson 10: durable runs
.PHONY: lesson-10 lesson-10-step-check lesson-10-step lesson-10-banner lesson-10-stack
.PHONY: lesson-10-down durable-test bench-durable lesson-10-image

# Lesson 10: edge, two replicas of the durable-runs API and Postgres, as the Compose project lesson10.
LESSON10_PORT ?= 8110
LESSON10_IMAGE ?= lesson-10-agent
export LESSON10_PORT LESSON10_IMAGE
LESSON10_COMPOSE = DOCKER_GID=$(DOCKER_GID) docker compose -p lesson10 -f code/lesson10/compose.yaml

# `make lesson-10 STEP=K` runs step K of docs/10-durable-runs.md (code/lesson10/stepK_*.py) on the host;
# `make lesson-10` brings up the production app the steps arrive at, in Compose (Going further).
LESSON10_STEP_FILE = $(call step_file,10)
lesson-10: $(if $(STEP),lesson-10-step,lesson-10-stack) ## Lesson 10: durable runs, a person approves run_python. STEP=1..5: that step on the host; alone: the production app in Compose, edge on 127.0.0.1:8110 (LESSON10_PORT), returns once healthy

# What a step needs that make cannot build, checked before anything is built.
lesson-10-step-check:
	@: $(LESSON10_STEP_FILE)
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
	     echo "  from another terminal instead of answering:  kill -9 \$$(pgrep -f step1_interrupt)"; \
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
	@$(PY) -m $(call step_module,10)

# The banner alone: tests/lesson_10/test_steps.py compares it with the doc.
lesson-10-banner: lesson-10-step-check
	$(lesson10_banner)

lesson-10-stack: lesson-10-image sandbox-image code/lesson10/.env
	$(LESSON10_COMPOSE) up -d --wait
	@echo
	@echo "  Durable runs (Compose project lesson10: edge, agent1, agent2, postgres, docker-guard) on http://127.0.0.1:$(LESSON10_PORT)  (offline model unless OPENAI_API_KEY is set)"
	@echo "  Approvals page: http://127.0.0.1:$(LESSON10_PORT)/approvals   (ask a question there, or paste the owner_token of a run you started with curl)"
	@echo "  Start a run:    curl -s -X POST http://127.0.0.1:$(LESSON10_PORT)/v1/runs -H 'Content-Type: application/json' -d '{\"query\": \"What is 2**100?\"}'"
	@echo "  Kill replicas:  docker compose -p lesson10 -f code/lesson10/compose.yaml kill -s SIGKILL agent1 agent2"
	@echo "  Stop:           make lesson-10-down   (removes the project's containers, networks, Postgres volume and sandboxes)"
	@echo

# Two random passwords the first time (the superuser's and the agent's), for Compose's ${...}.
code/lesson10/.env:
	@umask 077 && printf 'LESSON10_POSTGRES_PASSWORD=%s\nLESSON10_AGENT_PASSWORD=%s\n' \
	  "$$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')" "$$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')" > $@

lesson-10-down: docker-tools ## Lesson 10: remove the Compose project lesson10 (containers, networks, Postgres volume) and any sandbox a lesson 10 process left; the steps' own database: docker rm -f -v lesson10-postgres
	$(LESSON10_COMPOSE) down -v --remove-orphans
	@docker ps -aq --filter label=agent-sandbox.owner=lesson10 | xargs -r docker rm -f >/dev/null

durable-test: lesson-10-image sandbox-image test-tools $(VENV)/.installed ## Lesson 10 in containers: kill -9 a replica while a run waits, during a model call and while run_python runs; two replicas racing a decision; the approvals page in headless Chromium; down leaves nothing
	@scripts/ensure-command.sh chromium chromium "the approvals page is checked in a real browser"
	$(PY) -m pytest -m container tests/lesson_10 -v $(PYTEST_ARGS)

bench-durable: $(VENV)/.installed test-tools ## Lesson 10: the Postgres checkpointer vs none (target <= 1.15x), restart -> resumed event p50/p99, 1,000 waiting runs' memory and connections
	BENCH_COMMAND="make $@" $(PY) -m bench.durable

# Lesson 10's image: the research agent's optimized image (its lock has the Postgres checkpointer) plus
# the lesson's files.
lesson-10-image: docker-tools offline-images
	@scripts/offline-images.sh postgres:15
	@scripts/build-images.sh optimized
	DOCKER_BUILDKIT=1 docker build -q -f code/lesson10/Dockerfile --build-arg BASE_IMAGE=research-agent:optimized$(TAG_SUFFIX) -t $(LESSON10_IMAGE) .
