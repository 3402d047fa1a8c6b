# Lesson 06, scale-out: its make targets and variables (the root Makefile includes this file).

##@ Lesson 06: scale-out
.PHONY: lesson-06 lesson-06-down swarm-test bench-scaleout swarm-images

# Lesson 06 on Docker Swarm behind HAProxy. The Kubernetes manifests in code/lesson06/k8s/ are validated
# offline by `make test` (tests/lesson_06/test_k8s.py).
STACK ?= research-agent
# HAProxy publishes 8080, or PORT when it is given (the 8000 default above is for the host-run lessons).
LESSON06_PORT = $(if $(filter file,$(origin PORT)),8080,$(PORT))

lesson-06: swarm-images $(VENV)/.lessons ## Lesson 06: 3 agent replicas behind HAProxy on Swarm, port 8080 (or PORT); returns once healthy
	@$(PY) scripts/swarm.py up --stack $(STACK) --port $(LESSON06_PORT)

lesson-06-down: $(VENV)/.lessons ## Lesson 06: remove the stack and its volume; leave Swarm if lesson-06 joined it
	@$(PY) scripts/swarm.py down --stack $(STACK)

swarm-test: swarm-images $(VENV)/.installed ## make lesson-06 for real: replicas, request ids, shared cache, SSE, rollback, lesson-06-down
	$(PY) -m pytest -m container tests/lesson_06/test_swarm.py -v $(PYTEST_ARGS)

bench-scaleout: swarm-images $(VENV)/.installed ## Rolling update and docker stop under load (target: 0 failed), 1 vs 3 replicas
	@scripts/ensure-command.sh wrk wrk
	BENCH_COMMAND="make $@" $(PY) -m bench.scaleout

swarm-images: docker-tools
	@scripts/offline-images.sh python:3.11-slim redis:7 haproxy:2.6
	@scripts/build-images.sh optimized
