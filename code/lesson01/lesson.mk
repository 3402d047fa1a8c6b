# Lesson 01, an agent behind an API: its make targets and variables (the root Makefile includes this file).

##@ Lesson 01: an agent behind an API
.PHONY: lesson-01 lesson-01-production bench-api

# Lesson 01 is five steps, code/lesson01/step1_*.py to step5_*.py, each an API that serves until
# Ctrl+C: `make lesson-01 STEP=K` serves step K; `make lesson-01` the last, where the steps arrive.
LESSON01_STEP = $(or $(STEP),5)

lesson-01: $(VENV)/.lesson01 ## Lesson 01: an agent behind an API, in 5 steps (STEP=1..5; alone, step 5; PORT=8100 for another port)
	@echo
	@echo "  Lesson 01, step $(LESSON01_STEP) of 5: $(call step_file,01,$(LESSON01_STEP)) (docs/01-agent-api.md, section $(LESSON01_STEP))"
	$(call serving,Agent API,v1/invoke,What is a container?)
	@$(PY) -m $(call step_module,01,$(LESSON01_STEP))

lesson-01-production: $(VENV)/.lesson01 ## Lesson 01, Going further: the production version (settings, strict input, body limit, cache, CORS)
	$(call serving,Agent API (production version),v1/invoke,What is a container?)
	@$(PY) -m lesson01.production_api

bench-api: $(VENV)/.installed ## Requests/s, latency and CPU per request of lesson 01's five steps and production version vs bare FastAPI
	@scripts/ensure-command.sh wrk wrk "it generates the load" "macOS: brew install wrk"
	BENCH_COMMAND="make $@" $(PY) -m bench.api
