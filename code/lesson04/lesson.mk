# Lesson 04, sandboxed tools: its make targets and variables (the root Makefile includes this file).

##@ Lesson 04: sandboxed tools
.PHONY: lesson-04 lesson-04-production sandbox-test bench-sandbox

# Lesson 04 is four steps, code/lesson04/step1_*.py to step4_*.py: `make lesson-04 STEP=K` runs
# step K; `make lesson-04` the last, the API. The first three are scripts that print and exit.
LESSON04_STEP := $(or $(STEP),4)
LESSON04_FILE = $(call step_file,04,$(LESSON04_STEP))
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
	@$(PY) -m $(call step_module,04,$(LESSON04_STEP))

lesson-04-production: $(VENV)/.lessons sandbox-image ## Lesson 04, Going further: the production API (the research agent's runner: error shape, queue, pool, egress, gVisor)
	@echo
	@echo "  Sandboxed tools, production version, on http://$(HOST):$(PORT)  (offline model unless OPENAI_API_KEY is set; Ctrl+C stops it)"
	@echo "  Swagger UI: http://$(HOST):$(PORT)/docs"
	@echo "  Run code:   curl -s -X POST http://$(HOST):$(PORT)/v1/tools/python -H 'content-type: application/json' -d '{\"code\": \"print(2**100)\"}'"
	@echo "  Ask:        curl -s -X POST http://$(HOST):$(PORT)/v1/agent -H 'content-type: application/json' -d '{\"query\": \"What is 2**100?\"}'"
	@echo "  A pool of containers started ahead: SANDBOX_POOL_SIZE=2 make lesson-04-production"
	@echo
	@$(PY) -m lesson04.sandboxed_tools

sandbox-test: sandbox-image $(VENV)/.installed ## The hostile suite under every runtime the daemon has (runc, gVisor), and egress attacks through the proxy
	$(PY) -m pytest -m container tests/lesson_04 tests/lesson_02/test_sandbox_tool.py tests/repo/test_docs.py -v $(PYTEST_ARGS)

bench-sandbox: sandbox-image $(VENV)/.installed ## Fresh and pooled sandbox runs vs a bare `docker run --rm` (and exec); runsc vs runc; egress proxy vs direct
	BENCH_COMMAND="make $@" $(PY) -m bench.sandbox
