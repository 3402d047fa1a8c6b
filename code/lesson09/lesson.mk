# Lesson 09, traces: its make targets and variables (the root Makefile includes this file).

##@ Lesson 09: traces
.PHONY: lesson-09 lesson-09-step-check lesson-09-step lesson-09-banner lesson-09-viewer
.PHONY: lesson-09-stack lesson-09-images lesson-09-down traces-test traces-screenshot bench-tracing

# Lesson 09: lesson 03's stack plus traces and a viewer, as the Compose project lesson09.
LESSON09_PORT ?= 8090
VIEWER_PORT ?= 6006
# Step 4's write-only ingest, on the host beside its API (the stack's ingest is not published).
LESSON09_INGEST_PORT ?= 4318
export VIEWER_PORT
LESSON09_PROJECT ?= lesson09
LESSON09_COMPOSE = AGENT_PORT=$(LESSON09_PORT) docker compose -p $(LESSON09_PROJECT) -f research-agent/docker-compose.yml -f code/lesson09/compose.traces.yaml

# `make lesson-09 STEP=K` runs step K of docs/09-traces.md (code/lesson09/stepK_*.py) on the host; steps 2
# to 4 start the viewer first (the stack's Phoenix, alone). `make lesson-09` brings up what the steps
# arrive at: lesson 03's stack exporting through a write-only ingest to the viewer.
LESSON09_STEP_FILE = $(call step_file,09)
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
	@: $(LESSON09_STEP_FILE)

lesson-09-step: lesson-09-step-check $(VENV)/.lessons $(if $(filter 2 3 4,$(STEP)),lesson-09-viewer)
	$(lesson09_banner)
	@$(LESSON09_STEP_ENV) $(PY) -m $(call step_module,09)

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

traces-test: docker-tools offline-images lesson-05-image sandbox-image test-tools $(VENV)/.installed $(LESSON08_VENV)/.installed ## Lesson 09 in containers: a question through the edge is one trace in Phoenix, found by headless Chromium (screenshot); step 4's commands with Phoenix behind its ingest; a caller's traceparent kept only when trusted; the agent's and lesson 05's worker containers can send spans, not read or delete them; down leaves nothing
	@scripts/ensure-command.sh chromium chromium "the viewer is checked in a real browser"
	WORKER_IMAGE=$(LESSON05_IMAGE) $(PY) -m pytest -m container tests/lesson_09 -v $(PYTEST_ARGS)

traces-screenshot: docker-tools offline-images lesson-05-image sandbox-image test-tools $(VENV)/.installed $(LESSON08_VENV)/.installed ## Lesson 09: the browser test, saving the trace's picture to docs/images/
	@scripts/ensure-command.sh chromium chromium
	WORKER_IMAGE=$(LESSON05_IMAGE) SCREENSHOT=docs/images/09-trace.png $(PY) -m pytest -m container tests/lesson_09/test_viewer.py -v -k in_a_browser

bench-tracing: $(VENV)/.installed ## CPU per request of the research agent: no tracing code vs tracing off vs on (batch export to a local collector)
	BENCH_COMMAND="make $@" $(PY) -m bench.tracing
