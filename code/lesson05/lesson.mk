# Lesson 05, parallel variations: its make targets and variables (the root Makefile includes this file).

##@ Lesson 05: parallel variations
.PHONY: lesson-05 lesson-05-down variations-test variations-screenshot bench-variations
.PHONY: lesson-05-image

# Lesson 05's workers run the research-agent image under its own tag, so a rebuild of
# research-agent:optimized from elsewhere cannot change the image under a running test.
LESSON05_IMAGE ?= research-agent:lesson-05

# Lesson 05 is five steps, code/lesson05/step1_*.py to step5_*.py: `make lesson-05 STEP=K` runs step
# K beside the lesson's Redis and network (scripts/lesson-05.sh run); steps 1 to 3 print and exit, 4
# and 5 serve an API. `make lesson-05` alone runs where the steps arrive: the production API and its page.
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
	@echo "  Lesson 05, step $(STEP) of 5: $(call step_file,05) (docs/05-parallel-variations.md, section $(STEP))"
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
	@WORKER_IMAGE=$(LESSON05_IMAGE) scripts/lesson-05.sh run $(call step_module,05)
endif

lesson-05-down: ## Lesson 05: remove its Redis, network and any worker container left running, the steps' too (disconnects lesson 09's trace ingest)
	@scripts/lesson-05.sh down

variations-test: lesson-05-image test-tools $(VENV)/.installed ## Lesson 05 with real containers: its steps as the doc runs them, the last against the production API, and headless Chromium on its page (installs chromium)
	@scripts/ensure-command.sh chromium chromium
	WORKER_IMAGE=$(LESSON05_IMAGE) $(PY) -m pytest -m container tests/lesson_05 -v $(PYTEST_ARGS)

variations-screenshot: lesson-05-image $(VENV)/.installed ## Lesson 05: the browser test, saving the page to docs/images/
	@scripts/ensure-command.sh chromium chromium
	WORKER_IMAGE=$(LESSON05_IMAGE) SCREENSHOT=docs/images/05-variations.png $(PY) -m pytest -m container tests/lesson_05/test_browser.py -v

bench-variations: lesson-05-image $(VENV)/.installed ## N = 1, 2, 4, 8 variations in containers vs in one process
	BENCH_COMMAND="make $@" WORKER_IMAGE=$(LESSON05_IMAGE) $(PY) -m bench.variations

lesson-05-image: IMAGES = optimized
lesson-05-image: build
	docker tag research-agent:optimized$(TAG_SUFFIX) $(LESSON05_IMAGE)
