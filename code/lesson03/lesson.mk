# Lesson 03, containers: its make targets and variables (the root Makefile includes this file).

##@ Lesson 03: containers
.PHONY: lesson-03 lesson-03-down smoke compose-test bench-images bench-start bench-start-host sizes

lesson-03: docker-tools offline-images ## Lesson 03: the research agent, Redis and an HAProxy edge with Compose, built; returns once healthy
	cd research-agent && AGENT_PORT=$(PORT) docker compose up --build --wait
	@echo
	@echo "  Research agent (Compose: HAProxy edge, agent, Redis) on http://127.0.0.1:$(PORT)  (offline model unless OPENAI_API_KEY is set)"
	@echo "  Try it:  curl -s -X POST http://127.0.0.1:$(PORT)/v1/research -H 'content-type: application/json' -d '{\"query\": \"Why use a multi-stage Docker build?\"}'"
	@echo "           ask the same again: \"cached\": true, the answer came from Redis"
	@echo "  Status:  cd research-agent && docker compose ps      Logs: docker compose logs -f agent"
	@echo "  Stop:    make lesson-03-down   (removes the containers and the cache volume)"
	@echo

lesson-03-down: docker-tools ## Lesson 03: stop the Compose stack and remove its containers and cache volume
	cd research-agent && docker compose down -v

smoke: build $(VENV)/.installed ## Run each image, check it (tests/lesson_03/test_container.py), docker stop it mid-stream
	CONTAINER_IMAGES="$(addsuffix $(TAG_SUFFIX),$(addprefix research-agent:,$(IMAGES)))" $(PY) -m pytest -m container tests/lesson_03/test_container.py tests/lesson_03/test_container_shutdown.py -v $(PYTEST_ARGS)

compose-test: docker-tools offline-images $(VENV)/.installed ## Compose v1 and v2: up (offline) behind the edge, cache hit, stop mid-answer, down -v; header and slow-client attacks and Redis stopped under v2; the tests that build or compose, with the CLI plugins hidden
	@scripts/ensure-command.sh docker-compose docker-compose "the test runs Compose v1 as well as v2"
	$(PY) -m pytest -m container tests/lesson_03/test_compose.py tests/repo/test_cli_plugins.py -v $(PYTEST_ARGS)

bench-images: docker-tools offline-images $(VENV)/.installed ## Cold build, code-only rebuild, size, start time per Dockerfile
	BENCH_COMMAND="make $@" $(PY) -m bench.images

bench-start: build $(VENV)/.installed ## docker run -> /ready and -> healthy for the built images (no rebuild)
	BENCH_COMMAND="make $@" $(PY) -m bench.images --start-only

bench-start-host: build $(VENV)/.installed ## The three images vs `python main.py` on the host: start->ready, first request, imports and what they compile
	BENCH_COMMAND="make $@" $(PY) -m bench.images --vs-host $(addsuffix $(TAG_SUFFIX),$(addprefix research-agent:,$(IMAGES)))

sizes: build ## Table: image sizes against their floor, and where the optimized image's bytes went
	@$(PYTHON) scripts/image_sizes.py

