# Lesson 07, event-driven agents: its make targets and variables (the root Makefile includes this file).

##@ Lesson 07: event-driven agents
.PHONY: lesson-07 lesson-07-step-check lesson-07-step lesson-07-banner lesson-07-redis
.PHONY: lesson-07-stack lesson-07-down lesson-07-trace pubsub-test bench-pubsub lesson-07-image

# Lesson 07: five agents and a gateway from one image, as the Compose project lesson07.
LESSON07_IMAGE ?= lesson-07-agents
LESSON07_PROJECT ?= lesson07
LESSON07_PORT ?= 8070
export LESSON07_IMAGE LESSON07_PORT
# Its secrets (a Redis password per service, the users' file, the token key), made once into a
# folder only you can read: code/lesson07/redis_users.py.
LESSON07_SECRETS ?= $(CURDIR)/code/lesson07/secrets
export LESSON07_SECRETS
LESSON07_COMPOSE = docker compose -p $(LESSON07_PROJECT) -f code/lesson07/compose.yaml

# Lesson 07 is four steps on the host, code/lesson07/step1_*.py to step4_*.py, each a script that prints
# and exits, against the steps' own Redis (a container on loopback, with a password): `make lesson-07
# STEP=K` runs step K. Alone (or STEP=5), `make lesson-07` brings up what the steps arrive at: the five
# agents and the gateway as the Compose project lesson07.
LESSON07_STEP_FILE = $(call step_file,07)
LESSON07_STACK_STEP := 5
LESSON07_REDIS = $(LESSON07_PROJECT)-redis
LESSON07_REDIS_PORT ?= 6307
LESSON07_STEPS_SECRET := code/lesson07/steps-redis-password
LESSON07_ABOUT_1 := Five agents, each reading one topic and writing the next: three questions asked, routed, answered, counted.
LESSON07_ABOUT_2 := A consumer dies holding an event (a second process, kill -9): the event stays pending, another claims it.
LESSON07_ABOUT_3 := The first question's event arrives a second time: every effect is stored once.
LESSON07_ABOUT_4 := A model server that is down, and an event that is not a CloudEvent: both end in a dead-letter topic.

lesson-07: $(if $(filter-out 5,$(STEP)),lesson-07-step,lesson-07-stack) ## Lesson 07: event-driven agents in 5 steps (STEP=1..4: a script on the host; alone or STEP=5: five agents on Redis Streams in Compose, gateway on 8070 (LESSON07_PORT), returns once healthy)

lesson-07-step-check:
	@: $(LESSON07_STEP_FILE)

# What `make lesson-07 STEP=K` prints before the step: which file, what it shows, its Redis.
define lesson07_banner
	@echo
	@echo "  Lesson 07, step $(STEP) of 5: $(LESSON07_STEP_FILE) (docs/07-event-driven-agents.md, section $(STEP))"
	@echo "  $(LESSON07_ABOUT_$(STEP))"
	@echo "  Offline model unless OPENAI_API_KEY is set. It prints what happened and exits. Next: make lesson-07 STEP=$(shell echo $$(($(STEP) + 1)))"
	@echo "  Its Redis: the container $(LESSON07_REDIS) on 127.0.0.1:$(LESSON07_REDIS_PORT); make lesson-07-down removes it."
	@echo
endef

lesson-07-step: lesson-07-step-check $(VENV)/.lessons lesson-07-redis
	$(lesson07_banner)
	@REDIS_URL="redis://:$$(cat $(LESSON07_STEPS_SECRET))@127.0.0.1:$(LESSON07_REDIS_PORT)/0" $(PY) -m $(call step_module,07)

# The banner alone: tests/lesson_07/test_steps.py compares it with the doc.
lesson-07-banner: lesson-07-step-check
	$(lesson07_banner)

# The steps' Redis: redis:7 as its own user, on loopback, its password from a file only you can read
# (passed in the environment, never on a command line); started once and kept between steps.
lesson-07-redis: $(LESSON07_STEPS_SECRET)
	@scripts/offline-images.sh redis:7
	@if [ -z "$$(docker ps -q --filter name='^$(LESSON07_REDIS)$$')" ]; then \
	  docker rm -f $(LESSON07_REDIS) >/dev/null 2>&1; \
	  REDIS_PASSWORD="$$(cat $(LESSON07_STEPS_SECRET))" docker run -d --name $(LESSON07_REDIS) --user redis \
	    -e REDIS_PASSWORD -p 127.0.0.1:$(LESSON07_REDIS_PORT):6379 --read-only --tmpfs /tmp \
	    --cap-drop ALL --security-opt no-new-privileges redis:7 sh -c \
	    'printf "requirepass \"%s\"\nsave \"\"\n" "$$REDIS_PASSWORD" > /tmp/auth.conf && exec redis-server /tmp/auth.conf' >/dev/null; \
	fi
	@for i in $$(seq 150); do \
	  docker exec $(LESSON07_REDIS) sh -c 'REDISCLI_AUTH="$$REDIS_PASSWORD" redis-cli ping' 2>/dev/null | grep -q PONG && exit 0; sleep 0.2; \
	done; echo "$(LESSON07_REDIS) does not answer: docker logs $(LESSON07_REDIS)" >&2; exit 1

# The steps' Redis password, random, made once, readable by you alone (not in git).
$(LESSON07_STEPS_SECRET):
	@umask 077 && head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > $@

lesson-07-stack: lesson-07-image $(LESSON07_SECRETS)/users.acl
	$(LESSON07_COMPOSE) up -d --wait
	@echo
	@echo "  Event-driven agents (Compose project $(LESSON07_PROJECT)) behind the gateway on http://127.0.0.1:$(LESSON07_PORT)  (offline model unless OPENAI_API_KEY is set)"
	@echo "  Enrol:    curl -s -X POST http://127.0.0.1:$(LESSON07_PORT)/v1/students -H 'content-type: application/json' -d '{\"student_id\": \"ann\"}'"
	@echo "            (it returns the student's student_token, once: send it as -H 'Authorization: Bearer TOKEN')"
	@echo "  Ask:      curl -s -X POST http://127.0.0.1:$(LESSON07_PORT)/v1/questions -H 'Authorization: Bearer TOKEN' -H 'content-type: application/json' -d '{\"student_id\": \"ann\", \"text\": \"Give me an exercise on Docker volumes\"}'"
	@echo "  Answer:   curl -s -H 'Authorization: Bearer TOKEN' http://127.0.0.1:$(LESSON07_PORT)/v1/questions/ID"
	@echo "  Progress: curl -s -H 'Authorization: Bearer TOKEN' http://127.0.0.1:$(LESSON07_PORT)/v1/students/ann/progress"
	@echo "  Watch:    make lesson-07-trace     (each event, topic, consumer and delivery count, as it happens)"
	@echo "  Scale:    $(LESSON07_COMPOSE) up -d --scale concepts=3"
	@echo "  Kill one: docker kill \$$($(LESSON07_COMPOSE) ps -q concepts | head -1)"
	@echo "  Stop:     make lesson-07-down   (removes the containers, the network and the Redis volume)"
	@echo

# Lesson 07's secrets, random, made once with umask 077 (Compose mounts each into its container; not in git).
$(LESSON07_SECRETS)/users.acl:
	@$(PYTHON) code/lesson07/redis_users.py $(LESSON07_SECRETS)

lesson-07-down: docker-tools ## Lesson 07: remove its containers, network and Redis volume, and the steps' Redis
	$(LESSON07_COMPOSE) down -v --remove-orphans
	@docker rm -f $(LESSON07_REDIS) >/dev/null 2>&1 || true

lesson-07-trace: docker-tools ## Lesson 07: follow every event through the topics (TRACE_ALL=1: from the start)
	$(LESSON07_COMPOSE) exec -e TRACE_ALL=$(TRACE_ALL) gateway python -m lesson07.event_agents trace

pubsub-test: lesson-07-image test-tools $(VENV)/.installed ## Lesson 07 in containers: specialist killed twice under load, Redis restarted, dead letters, counts exact, down -v
	$(PY) -m pytest -m container tests/lesson_07 -v $(PYTEST_ARGS)

bench-pubsub: lesson-07-image $(VENV)/.installed ## Lesson 07: questions/s and p50/p99 with 1 and 3 concepts consumers, and where the time goes
	BENCH_COMMAND="make $@" $(PY) -m bench.pubsub

# Lesson 07's image: the research agent's optimized image (the pinned lock) plus the lesson's files.
lesson-07-image: docker-tools offline-images
	@scripts/build-images.sh optimized
	DOCKER_BUILDKIT=1 docker build -q -f code/lesson07/Dockerfile --build-arg BASE_IMAGE=research-agent:optimized$(TAG_SUFFIX) -t $(LESSON07_IMAGE) .
