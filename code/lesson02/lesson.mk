# Lesson 02, the research agent: its make targets and variables (the root Makefile includes this file).

##@ Lesson 02: the research agent
.PHONY: lesson-02 research-agent bench-sse-proxy

# make lesson-02 STEP=K runs step K of lesson 02, code/lesson02/stepK_*.py: steps 1 to 3 are scripts
# that print an answer, steps 4 and 5 serve it. Without STEP: the research agent package they arrive at.

lesson-02: $(VENV)/.lessons $(if $(STEP),,research-agent) ## Lesson 02: the research agent on the host (offline by default); STEP=1..5 runs that step of the lesson
ifneq ($(STEP),)
	$(if $(filter 1 2 3,$(STEP)),,$(call serving,Lesson 02 step $(STEP),v1/research,What does docker stop do?))
	@$(PY) -m $(call step_module,02)
endif

research-agent: $(VENV)/.lessons ## Lesson 02 under the app's name: the same as make lesson-02
	$(call serving,Research agent,v1/research,Why use a multi-stage Docker build?)
	@cd research-agent && ../$(PY) main.py

bench-sse-proxy: $(VENV)/.installed ## Time to first SSE token, direct vs nginx (gzip) with/without X-Accel-Buffering
	@scripts/ensure-command.sh nginx nginx "the benchmark puts nginx in front of the agent" "macOS: brew install nginx"
	BENCH_COMMAND="make $@" $(PY) -m bench.sse_proxy
