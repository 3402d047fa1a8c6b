# Lesson 11, evals: its make targets and variables (the root Makefile includes this file).

##@ Lesson 11: evals
.PHONY: lesson-11 evals evals-test evals-baseline evals-phoenix-test evals-screenshot bench-evals

# `make lesson-11 STEP=K` runs step K of docs/11-evals.md (code/lesson11/stepK_*.py); without STEP, the
# gate the steps arrive at: make evals. Evals are tests: lesson 11 installs the test tools' lock.
lesson-11: $(VENV)/.installed $(if $(STEP),,evals) ## Lesson 11: the agent's evals as a gate; STEP=1..4 runs that step of the lesson, alone make evals
ifneq ($(STEP),)
	@$(PY) -m $(call step_module,11)
endif

# The evals: offline by default (each case once); with OPENAI_API_KEY each case RUNS times (3), with
# pass rates compared to code/lesson11/baselines/<model>.json; PHOENIX_URL=http://127.0.0.1:6006
# reads the spans back from lesson 09's viewer and logs the results there as an experiment.
EVALS_ARGS = $(if $(RUNS),--runs $(RUNS)) $(if $(PHOENIX_URL),--phoenix $(PHOENIX_URL))
evals: $(VENV)/.installed ## Lesson 11: the dataset through the research agent, read from its traces: a table, a report (evals-report/index.html), exit 1 when a required case fails
	@$(PY) -m lesson11 $(EVALS_ARGS)

evals-test: $(VENV)/.installed ## Lesson 11's own check: docs/11's commands typed as the page shows them, the gate against the agent broken four ways, and a real model's code path run three times a case
	$(PY) -m pytest -m container tests/lesson_11/test_steps.py tests/lesson_11/test_gate.py tests/lesson_11/test_real_model.py -v $(PYTEST_ARGS)

evals-baseline: $(VENV)/.installed ## Lesson 11: run the evals and write their pass rates as the baseline for this model (code/lesson11/baselines/)
	@$(PY) -m lesson11 --write-baseline $(EVALS_ARGS)

evals-phoenix-test: docker-tools offline-images $(VENV)/.installed ## Lesson 11 with lesson 09's viewer: Phoenix (docker/phoenix) in a container, the evaluators reading the spans back from it, the results an experiment there; a broken agent read from it fails the gate
	$(PY) -m pytest -m container tests/lesson_11/test_phoenix.py -v

evals-screenshot: $(VENV)/.installed ## Lesson 11: make evals' report in headless Chromium, saved to docs/images/11-evals-report.png
	@scripts/ensure-command.sh chromium chromium "the report is opened in a real browser"
	SCREENSHOT=docs/images/11-evals-report.png $(PY) -m pytest -m container tests/lesson_11/test_report_browser.py -v

bench-evals: $(VENV)/.installed ## Lesson 11: make evals' time, and the share of it that starts the suite (imports, apps) against running the cases
	BENCH_COMMAND="make $@" $(PY) -m bench.evals
