# Lesson 08, tools over MCP: its make targets and variables (the root Makefile includes this file).

##@ Lesson 08: tools over MCP
.PHONY: lesson-08 lesson-08-step lesson-08-stack lesson-08-down lesson-08-replicas
.PHONY: lesson-08-replicas-down lesson-08-client mcp-test bench-mcp lesson-08-images

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
  LESSON08_AGENT_TOKEN=$$(cat code/lesson08/agent-token 2>/dev/null || echo none) \
  LESSON08_OPERATOR_TOKEN=$$(cat code/lesson08/operator-token 2>/dev/null) \
  LESSON08_LEARNER_TOKEN=$$(cat code/lesson08/learner-token 2>/dev/null) \
  DOCKER_GID=$(DOCKER_GID) docker compose -p $(LESSON08_PROJECT) -f code/lesson08/compose.yaml
# Lesson 08, going further: two stateless gateway replicas behind HAProxy, their pins in Redis, as
# the Compose project lesson08r (code/lesson08/replicas.yaml), on the same ports as lesson-08.
LESSON08_REPLICAS_PROJECT ?= lesson08r
LESSON08_REPLICAS_COMPOSE = COMPOSE_PROJECT_NAME=$(LESSON08_REPLICAS_PROJECT) \
  LESSON08_AGENT_TOKEN=$$(cat code/lesson08/agent-token 2>/dev/null || echo none) \
  LESSON08_OPERATOR_TOKEN=$$(cat code/lesson08/operator-token 2>/dev/null) \
  docker compose -p $(LESSON08_REPLICAS_PROJECT) -f code/lesson08/replicas.yaml

# Lesson 08 is five steps, code/lesson08/step1_*.py to step5_*.py, run on the host from lesson 08's own
# environment (mcp 2.x): `make lesson-08 STEP=K` runs step K. Alone, `make lesson-08` brings up what the
# steps arrive at, in Compose: the gateway, its tool containers started on demand, and the agent.
LESSON08_ABOUT_1 := It serves the notes server on http://127.0.0.1:8091/mcp until Ctrl+C: send it the doc's curl from a second terminal.
LESSON08_ABOUT_2 := It serves the notes server, then a client discovers it, lists its tools and calls one.
LESSON08_ABOUT_3 := It serves two tool servers and a gateway in front of them, then asks the gateway.
LESSON08_ABOUT_4 := It asks the gateway as two clients, each with its own bearer token and allow-list.
LESSON08_ABOUT_5 := It asks the gateway, changes a tool's description on its server, and asks again.
LESSON08_NEXT_5 := Going further: make lesson-08 (the production gateway, in Compose)

lesson-08: $(if $(STEP),lesson-08-step,lesson-08-stack) ## Lesson 08: tools over MCP behind a gateway. STEP=1..5: that step on the host; alone: the gateway on 8086 starting tool containers on demand, the agent on 8085

lesson-08-step: $(LESSON08_VENV)/.installed
	@echo
	@echo "  Lesson 08, step $(STEP) of 5: $(call step_file,08) (docs/08-mcp-tools.md, section $(STEP))"
	@echo "  $(LESSON08_ABOUT_$(STEP))"
	@echo "  Next: $(or $(LESSON08_NEXT_$(STEP)),make lesson-08 STEP=$(shell echo $$(($(STEP) + 1))))"
	@echo
	@$(LESSON08_VENV)/bin/python -m $(call step_module,08)

lesson-08-stack: lesson-08-images code/lesson08/agent-token code/lesson08/operator-token code/lesson08/learner-token
	$(LESSON08_COMPOSE) up -d --wait
	@echo
	@echo "  Research agent (Compose project $(LESSON08_PROJECT)) on http://127.0.0.1:$(LESSON08_PORT), its tools over MCP  (offline model unless OPENAI_API_KEY is set)"
	@echo "  Ask:       curl -s -X POST http://127.0.0.1:$(LESSON08_PORT)/v1/research -H 'content-type: application/json' -d '{\"query\": \"Why use a multi-stage Docker build?\"}'"
	@echo "             (the first question starts the notes server's container: docker ps --filter label=lesson08.owner)"
	@echo "  Call log:  docker compose -p $(LESSON08_PROJECT) -f code/lesson08/compose.yaml logs gateway   (one JSON line per tool call)"
	@echo "  MCP:       make lesson-08-client   (the MCP SDK's client lists the tools), or any MCP client on http://127.0.0.1:$(LESSON08_MCP_PORT)/mcp"
	@echo "             with Authorization: Bearer \$$(cat code/lesson08/learner-token)   (your client's token; without one, no tool)"
	@echo "  Pins:      curl -s -H \"Authorization: Bearer \$$(cat code/lesson08/operator-token)\" http://127.0.0.1:$(LESSON08_MCP_PORT)/pins   (/metrics likewise)"
	@echo "  Re-pin:    .venv/lesson08/bin/python -m lesson08.mcp_gateway repin notes   (the running gateway pins the server's tools again)"
	@echo "  Stop:      make lesson-08-down   (removes every container, network and volume of the lesson)"
	@echo

# The agent's bearer token for the gateway, random, made once (not in git).
code/lesson08/agent-token:
	@umask 077 && head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > $@

# Your own MCP client's token (the catalog's `learner`): without a token a client gets no tool.
code/lesson08/learner-token:
	@umask 077 && head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > $@

# The operator's token: /pins, /metrics and re-pinning on the gateway (not in git).
code/lesson08/operator-token:
	@umask 077 && head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > $@

lesson-08-down: docker-tools ## Lesson 08: remove its containers (the on-demand tool servers and sandboxes too), networks and volume
	@for label in lesson08.owner agent-sandbox.owner; do \
	  ids=$$(docker ps -aq --filter label=$$label=$(LESSON08_PROJECT)); [ -z "$$ids" ] || docker rm -f $$ids; done
	$(LESSON08_COMPOSE) down -v --remove-orphans

lesson-08-replicas: lesson-08-images code/lesson08/agent-token code/lesson08/operator-token ## Lesson 08, going further: two stateless gateway replicas behind HAProxy (MCP on 8086), pins shared in Redis; agent on 8085 (stop make lesson-08 first: same ports)
	$(LESSON08_REPLICAS_COMPOSE) up -d --wait
	@echo
	@echo "  Two gateway replicas (Compose project $(LESSON08_REPLICAS_PROJECT)) behind the edge on http://127.0.0.1:$(LESSON08_MCP_PORT)/mcp; the agent on http://127.0.0.1:$(LESSON08_PORT)"
	@echo "  Call log:  docker compose -p $(LESSON08_REPLICAS_PROJECT) -f code/lesson08/replicas.yaml logs gateway   (each line names its replica)"
	@echo "  Stop one:  docker stop $(LESSON08_REPLICAS_PROJECT)-gateway-1   (calls go on through the other; docker start brings it back)"
	@echo "  Remove:    make lesson-08-replicas-down"
	@echo

lesson-08-replicas-down: docker-tools ## Lesson 08, going further: remove the replicas' containers, networks and the pins volume
	$(LESSON08_REPLICAS_COMPOSE) down -v --remove-orphans

# The official MCP SDK's Client (2.x), from lesson 08's environment; code/lesson08/mcp_client.py TOOL k=v calls one.
lesson-08-client: $(LESSON08_VENV)/.installed ## Lesson 08: list the gateway's tools with the MCP SDK's client (the gateway must be up: make lesson-08)
	MCP_URL=http://127.0.0.1:$(LESSON08_MCP_PORT)/mcp $(LESSON08_VENV)/bin/python -m lesson08.mcp_client

mcp-test: lesson-08-images test-tools $(VENV)/.installed $(LESSON08_VENV)/.installed ## Lesson 08 in containers: on-demand tool servers, run_python's sandbox, limits, secrets, Docker guards, the challenge, Compose v2 (and v1 reading the file), two replicas with one stopped then killed under a burst, down leaves nothing
	@scripts/ensure-command.sh docker-compose docker-compose "a test checks that Compose v1 reads the file"
	$(PY) -m pytest -m container tests/lesson_08 -v $(PYTEST_ARGS)

bench-mcp: lesson-08-images $(VENV)/.installed $(LESSON08_VENV)/.installed ## Lesson 08: research over MCP vs in-process (target <= 1.6x), on-demand start vs docker run, gateway overhead p50/p99 for a client of each protocol era as a ratio to a plain FastAPI POST in the same run (target <= 1.0x); BENCH_PROFILE=1 records it with py-spy
	BENCH_COMMAND="make $@" $(PY) -m bench.mcp

# Lesson 08's images: the agent (the research agent's optimized image under its own tag, so a rebuild
# elsewhere cannot change it under the lesson), the notes and python servers and the gateway (one
# small lock), and lesson 04's sandbox image, which the python server runs code in.
lesson-08-images: docker-tools offline-images sandbox-image
	@TAG_SUFFIX=-lesson08 scripts/build-images.sh optimized
	DOCKER_BUILDKIT=1 docker build -q -f code/lesson08/Dockerfile --target notes -t lesson08-notes .
	DOCKER_BUILDKIT=1 docker build -q -f code/lesson08/Dockerfile --target python -t lesson08-python .
	DOCKER_BUILDKIT=1 docker build -q -f code/lesson08/Dockerfile --target gateway -t lesson08-gateway .

# Lesson 08 on the host: the image's lock (mcp 2.x, fastmcp 4.x) plus pytest and OpenTelemetry's SDK, with
# the course's packages installed editable as in .venv. Its steps, its servers in `make test` and
# `make bench-mcp`, and the mcp 2.x and FastMCP 4 clients the tests speak to them with run from it.
$(LESSON08_VENV)/.installed: code/lesson08/requirements-host.txt research-agent/build-requirements.txt $(PACKAGES) | $(VENV)/.lessons
	@echo "==> $(LESSON08_VENV): lesson 08's servers and clients (mcp 2.x, fastmcp 4.x)"
	@$(PYTHON) -m venv --without-pip --clear $(LESSON08_VENV)
	@UV_NATIVE_TLS=1 UV_PYTHON_DOWNLOADS=never $(VENV)/bin/uv pip install --quiet \
	  --python $(LESSON08_VENV)/bin/python --compile-bytecode --require-hashes \
	  -r code/lesson08/requirements-host.txt -r research-agent/build-requirements.txt
	@UV_NATIVE_TLS=1 UV_PYTHON_DOWNLOADS=never $(VENV)/bin/uv pip install --quiet \
	  --python $(LESSON08_VENV)/bin/python --no-deps --no-build-isolation -e research-agent -e .
	@touch $@
