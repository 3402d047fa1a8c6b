"""A variation of the research agent as a container, for the steps of docs/05: the research agent's
image with another command, the job in its environment, the limits, and each variation's preset."""

import os

import docker

from research_agent import Job

IMAGE = os.getenv("WORKER_IMAGE", "research-agent:lesson-05")  # the research agent's image...
COMMAND = ["python", "-m", "research_agent.worker"]  # ...with another command: one variation
NETWORK = os.getenv("WORKER_NETWORK", "lesson-05")  # Redis's network: the workers join it
DEPLOYMENT = os.getenv("DEPLOYMENT", "lesson-05")  # a label: make lesson-05-down removes these
WORKER_REDIS_URL = os.environ["WORKER_REDIS_URL"]  # Redis for the workers: XADD to their streams
MODEL = {name: os.getenv(name) for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}  # unset: offline
LIMITS = {  # what one variation may take; lesson 04 explains each
    "mem_limit": "512m",
    "memswap_limit": "512m",  # no swap: past 512 MB it is killed, not slowed down
    "nano_cpus": 1_000_000_000,  # one CPU
    "pids_limit": 128,
    "read_only": True,
    "tmpfs": {"/tmp": "size=16m"},
    "cap_drop": ["ALL"],
    "security_opt": ["no-new-privileges"],
    "healthcheck": {"test": ["NONE"]},  # the image's check asks for a port no worker opens
}
# Variation i's preset: what it sets in its worker's environment, an answer style for the job,
# a temperature and a number of search results for the research agent (lesson 02's settings).
PRESETS = [
    {"ANSWER_STYLE": "bullets", "TEMPERATURE": 0.0, "SEARCH_MAX_RESULTS": 4},
    {"ANSWER_STYLE": "brief", "TEMPERATURE": 0.0, "SEARCH_MAX_RESULTS": 4},
    {"ANSWER_STYLE": "detailed", "TEMPERATURE": 0.0, "SEARCH_MAX_RESULTS": 2},
    {"ANSWER_STYLE": "bullets", "TEMPERATURE": 0.9, "SEARCH_MAX_RESULTS": 6},
    {"ANSWER_STYLE": "brief", "TEMPERATURE": 0.9, "SEARCH_MAX_RESULTS": 6},
    {"ANSWER_STYLE": "detailed", "TEMPERATURE": 0.9, "SEARCH_MAX_RESULTS": 3},
    {"ANSWER_STYLE": "bullets", "TEMPERATURE": 0.0, "SEARCH_MAX_RESULTS": 1},
    {"ANSWER_STYLE": "detailed", "TEMPERATURE": 1.5, "SEARCH_MAX_RESULTS": 5},
]
client = docker.from_env()  # the engine the `docker` command uses


def start(run_id: str, index: int, query: str):
    """Variation `index` of the run, in a container of its own: its job is its environment."""
    job = Job(RUN_ID=run_id, VARIATION=index, QUERY=query, REDIS_URL=WORKER_REDIS_URL)
    labels = {"ai-course.run": run_id, "ai-course.variation": str(index)}
    return client.containers.run(
        IMAGE,
        COMMAND,  # a list: no shell ever parses the query
        environment=job.to_env(**PRESETS[index], **MODEL),  # RUN_ID=..., QUERY=..., ...
        network=NETWORK,
        name=f"{DEPLOYMENT}-{run_id[:12]}-{index}",  # what `docker ps` shows
        labels={"ai-course.deployment": DEPLOYMENT, **labels},
        detach=True,  # returns once the container runs
        **LIMITS,
    )
