"""Smoke test of the research agent as a container: the checks `make smoke` runs against each image.

Two ways to run it:

    python tests/lesson_03/test_container.py --url http://127.0.0.1:8000   # any running server
    make smoke                            # pytest: run each image, check it, docker stop it

As a script it needs only the standard library and exits 1 naming every check that failed. Under
pytest (marker `container`, left out of `make test`; the static Dockerfile checks at the end are
not) a fixture runs each image in CONTAINER_IMAGES on a free port, waits for Docker's health status
`healthy`, runs the same checks, imports every compiled extension module inside the image, then
`docker stop`s the container while a streaming request is in flight: the stream must still end with
[DONE] and the container exit by itself (not SIGKILLed: exit code 137). The container's logs are
printed when anything fails. Every HTTP call and every docker command has a timeout.
"""

# A learner's python3 may be older than the course's 3.11 (macOS ships 3.9): annotations such as
# `dict | None` are then left unevaluated instead of failing at import.
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

HTTP_TIMEOUT = 30  # seconds, for every request
QUERY = "Why use a multi-stage Docker build?"
OFFLINE_MODEL = "offline-research-model"


# --- HTTP, standard library only ------------------------------------------------------------------


def http(
    method: str, url: str, body=None, headers: dict | None = None, timeout: float = HTTP_TIMEOUT
):
    """Return (status, headers, body bytes); HTTP errors are answers too, not exceptions."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def get_json(url: str, **kwargs):
    status, headers, body = http("GET", url, **kwargs)
    return status, headers, json.loads(body) if body else None


def post_json(url: str, payload, **kwargs):
    status, headers, body = http("POST", url, payload, **kwargs)
    return status, headers, json.loads(body) if body else None


def stream_events(
    url: str, query: str, on_event=None, timeout: float = HTTP_TIMEOUT
) -> list[tuple[str, str]]:
    """POST to the SSE endpoint; return [(event, data), ...] up to and including ("", "[DONE]").

    `timeout` bounds every read; on_event(event, data) is called as each event arrives.
    """
    request = urllib.request.Request(
        url,
        data=json.dumps({"query": query}).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "Accept": "text/event-stream"},
    )
    events, name, data = [], "", []
    with urllib.request.urlopen(request, timeout=timeout) as response:
        assert response.status == 200, f"stream answered {response.status}"
        for raw in response:
            line = raw.decode().rstrip("\r\n")
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
            elif not line and data:
                events.append((name, "\n".join(data)))
                if on_event:
                    on_event(*events[-1])
                if events[-1][1] == "[DONE]":
                    break
                name, data = "", []
    return events


# --- The checks: each takes the base URL and raises AssertionError saying what is wrong -----------


def check_health(base: str) -> None:
    status, _, body = get_json(f"{base}/health")
    assert status == 200, f"/health answered {status}: {body}"
    assert body.get("status") == "ok", f"/health body: {body}"


def check_ready(base: str) -> None:
    status, _, body = get_json(f"{base}/ready")
    assert status == 200, f"/ready answered {status}: {body}"
    assert body.get("status") == "ready", f"/ready body: {body}"


# [start:image-checks]
def check_research(base: str) -> None:
    # post_json (above) returns (status, headers, body); QUERY, a question the bundled notes answer.
    status, _, body = post_json(f"{base}/v1/research", {"query": QUERY})
    assert status == 200, f"/v1/research answered {status}: {body}"
    assert body["model"] == OFFLINE_MODEL, f"expected the offline model, got {body['model']!r}"
    assert body["response"].strip(), "empty research answer"
    assert body["sources"], "the answer cites no sources"
    assert any(s["url"].startswith("notes/") for s in body["sources"]), (
        f"no bundled note among {body['sources']}"
    )
    assert "[1]" in body["response"], "the answer does not cite [1]"


def check_stream(base: str) -> None:
    events = stream_events(f"{base}/v1/research/stream", QUERY)
    names = [name for name, _ in events]
    assert events and events[-1] == ("", "[DONE]"), f"stream did not end with [DONE]: {names[-3:]}"
    for expected in ("tool", "token", "final"):
        assert expected in names, f"no `{expected}` event in the stream: {sorted(set(names))}"
    final = json.loads(dict(events[:-1])["final"])
    text = "".join(json.loads(data)["text"] for name, data in events if name == "token")
    assert text == final["response"], "the tokens do not add up to the final response"
    # [end:image-checks]


def check_metrics(base: str) -> None:
    status, headers, body = http("GET", f"{base}/metrics")
    assert status == 200, f"/metrics answered {status}"
    assert headers.get("Content-Type", "").startswith("text/plain"), (
        f"/metrics content type {headers.get('Content-Type')}"
    )
    assert re.search(rb'^http_requests_total\{[^}]*handler="/health"', body, re.M), (
        "no http_requests_total for /health"
    )


def check_validation_error(base: str) -> None:
    status, _, body = post_json(f"{base}/v1/research", {"query": ""})
    assert status == 422, f"an empty query answered {status}, expected 422"
    assert body["error"]["type"] == "validation_error", f"422 body: {body}"
    status, _, _ = http("POST", f"{base}/v1/research", b"{not json")
    assert status == 422, f"malformed JSON answered {status}, expected 422"


def check_request_id(base: str) -> None:
    request_id = f"smoke-{uuid.uuid4().hex[:12]}"
    status, headers, body = post_json(
        f"{base}/v1/research", {"query": QUERY}, headers={"X-Request-ID": request_id}
    )
    assert status == 200, f"/v1/research answered {status}"
    assert headers.get("X-Request-ID") == request_id, (
        f"X-Request-ID came back as {headers.get('X-Request-ID')!r}"
    )
    assert body["request_id"] == request_id, f"body request_id is {body['request_id']!r}"


CHECKS = [
    check_health,
    check_ready,
    check_research,
    check_stream,
    check_metrics,
    check_validation_error,
    check_request_id,
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Smoke-test a running research agent.")
    parser.add_argument("--url", required=True, help="base URL, e.g. http://127.0.0.1:8000")
    base = parser.parse_args(argv).url.rstrip("/")
    failed = []
    for check in CHECKS:
        name = check.__name__.removeprefix("check_")
        try:
            check(base)
            print(f"ok    {name}")
        except Exception as error:  # a refused connection or a timeout is a failure too
            failed.append(name)
            print(f"FAIL  {name}: {type(error).__name__}: {error}")
    if failed:
        print(f"{len(failed)} of {len(CHECKS)} checks failed against {base}: {', '.join(failed)}")
        return 1
    print(f"all {len(CHECKS)} checks passed against {base}")
    return 0


if __name__ == "__main__":
    sys.exit(main())


# --- pytest: run each image, check it, stop it mid-stream -----------------------------------------

try:
    import pytest
except ImportError:  # the script above needs only the standard library
    pytest = None

if pytest is not None:
    # Under pytest the support package is on the path (pyproject.toml): a stream read in a thread.
    from support.waiting import wait_for
    from tests.support.sse import BackgroundStream

    IMAGES = os.environ.get(
        "CONTAINER_IMAGES",
        "research-agent:basic research-agent:multistage research-agent:optimized",
    ).split()
    # How each image is meant to run: the optimized one with a read-only root file system.
    RUN_OPTIONS = {"research-agent:optimized": ["--read-only", "--tmpfs", "/tmp"]}
    HEALTHY_TIMEOUT = float(os.environ.get("HEALTHY_TIMEOUT", "120"))
    DOCKER_TIMEOUT = 60

    def docker(*args: str, timeout: float = DOCKER_TIMEOUT, check: bool = True) -> str:
        result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout.strip()

    class Container:
        def __init__(self, image: str):
            self.image = image
            self.id = docker(
                "run", "-d", "-p", "127.0.0.1::8000", *RUN_OPTIONS.get(image, []), image
            )
            host, _, port = docker("port", self.id, "8000/tcp").splitlines()[0].rpartition(":")
            self.url = f"http://127.0.0.1:{port}"  # Docker picked a free host port

        def state(self) -> dict:
            return json.loads(docker("inspect", "--format", "{{json .State}}", self.id))

        def logs(self) -> str:
            result = subprocess.run(
                ["docker", "logs", "--tail", "200", self.id],
                capture_output=True,
                text=True,
                timeout=DOCKER_TIMEOUT,
            )
            return result.stdout + result.stderr

        def healthy(self) -> bool:
            state = self.state()
            if not state["Running"]:
                raise AssertionError(
                    f"{self.image} exited with code {state['ExitCode']} before it was healthy"
                )
            if not state.get("Health"):
                raise AssertionError(f"{self.image} has no HEALTHCHECK")
            return state["Health"]["Status"] == "healthy"

        def wait_healthy(self) -> float:
            started = time.monotonic()
            wait_for(self.healthy, timeout=HEALTHY_TIMEOUT, interval=0.25,
                     what=f"{self.image} healthy")  # fmt: skip
            return time.monotonic() - started

        def remove(self) -> None:
            docker("rm", "-f", self.id, check=False)

    def show(request, text: str) -> None:
        """Print past pytest's output capture, so it shows whether or not a test failed."""
        with request.config.pluginmanager.getplugin("capturemanager").global_and_fixture_disabled():
            print(text, flush=True)

    @pytest.fixture(scope="module", params=IMAGES)
    def container(request):
        """One container per image for all the tests here; its logs are printed if one failed."""
        failures_before = request.session.testsfailed
        box = Container(request.param)
        try:
            try:
                seconds = box.wait_healthy()
            except AssertionError:
                show(request, f"\n---- logs of {box.image} ({box.id[:12]}) ----\n{box.logs()}")
                raise
            show(request, f"\n{box.image}: healthy {seconds:.1f}s after `docker run`, at {box.url}")
            yield box
            if request.session.testsfailed > failures_before:
                show(request, f"\n---- logs of {box.image} ({box.id[:12]}) ----\n{box.logs()}")
        finally:
            box.remove()

    @pytest.mark.container
    @pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
    def test_check(container, check):
        check(container.url)

    # Runs inside the image: import every compiled extension module of the venv. Stripping symbols
    # (Dockerfile.optimized) must break none; a module may fail only for want of an optional package
    # that is not installed at all (zstandard's cffi backend, say), exactly as it does unstripped.
    IMPORT_EVERY_EXTENSION = """
import importlib, importlib.util, json, os, sysconfig
site = sysconfig.get_paths()["purelib"]
# psycopg_binary's modules load only once psycopg has (psycopg picks its implementation first).
if importlib.util.find_spec("psycopg") is not None:
    importlib.import_module("psycopg")
found, failed = 0, []
for folder, dirs, files in os.walk(site):
    dirs[:] = [d for d in dirs if not d.endswith((".libs", ".dist-info"))]
    for f in files:
        if f.endswith(".so"):
            found += 1
            module = os.path.relpath(os.path.join(folder, f), site).split(".")[0].replace("/", ".")
            try:
                importlib.import_module(module)
            except ModuleNotFoundError as e:
                if importlib.util.find_spec(e.name.split(".")[0]) is not None:
                    failed.append(f"{module}: {e!r}")
            except Exception as e:
                failed.append(f"{module}: {e!r}"[:300])
print(json.dumps({"found": found, "failed": failed}))
"""

    @pytest.mark.container
    def test_every_extension_module_imports(container):
        result = json.loads(
            docker("exec", container.id, "python", "-c", IMPORT_EVERY_EXTENSION, timeout=120)
        )
        assert result["found"] > 40, f"only {result['found']} extension modules: wrong venv?"
        assert not result["failed"], "\n".join(result["failed"])

    @pytest.mark.container
    def test_the_package_imports_by_name_from_any_folder(container):
        """Lessons 07 and 10 run from folders of their own: the installed package (not /app on
        the path) must give `research_agent` itself, __init__ and public surface included."""
        code = "import research_agent as r; print(r.__file__, r.error_body.__name__)"
        out = docker("exec", "-w", "/", container.id, "python", "-c", code, timeout=60)
        assert out.split() == ["/app/research_agent/__init__.py", "error_body"], out

    @pytest.mark.container
    def test_docker_stop_lets_the_in_flight_stream_finish(container):
        """SIGTERM mid-stream: the stream ends with [DONE], the process exits before SIGKILL."""
        stream = BackgroundStream(f"{container.url}/v1/research/stream", QUERY)
        assert stream.first_token.wait(HTTP_TIMEOUT), "no token arrived from the stream"
        assert stream.error is None, f"stream failed before the stop: {stream.error!r}"
        tokens_before_stop = stream.names().count("token")
        stop_started = time.monotonic()
        docker("stop", container.id, timeout=30)  # Docker's default grace: 10 s, then SIGKILL
        stop_seconds = time.monotonic() - stop_started
        stream.thread.join(HTTP_TIMEOUT)

        assert stream.error is None, f"the in-flight stream broke on docker stop: {stream.error!r}"
        assert stream.events and stream.events[-1].data == "[DONE]", (
            f"the stream did not finish with [DONE]: {stream.names()[-5:]}"
        )
        assert "final" in stream.names(), "the stream ended without its final event"
        assert stream.names().count("token") > tokens_before_stop, (
            "the stream had finished before docker stop: not a mid-stream test"
        )
        state = container.state()
        assert not state["Running"], "the container still runs after docker stop"
        assert state["ExitCode"] != 137 and not state["OOMKilled"], (
            f"SIGKILLed (exit {state['ExitCode']}) after {stop_seconds:.1f}s"
        )
        assert stop_seconds < 10, f"docker stop took {stop_seconds:.1f}s: the grace period ran out"

    # docs/03's steps 1 to 4: each command block the doc marks as checked here, typed as written
    # (the images' tags with make smoke's TAG_SUFFIX, a free port and a container name of the
    # test's own), and what it printed compared with the block that follows it.
    DOC = Path(__file__).resolve().parents[2] / "docs" / "03-containers.md"
    DOC_MARK = "<!-- checked-by: tests/lesson_03/test_container.py -->"

    def doc_commands() -> list[tuple[str, str]]:
        """(command, the output the doc shows after it) of each block the doc says this checks."""
        text = DOC.read_text(encoding="utf-8")
        pattern = re.escape(DOC_MARK) + r"\n```bash\n(.*?)```\n\n[^`]*?```text\n(.*?)```"
        return re.findall(pattern, text, flags=re.S)

    @pytest.mark.container
    def test_the_docs_image_commands_print_what_the_doc_shows():
        from support.ports import free_port
        from tests.support.doc_session import differences

        tags = {image.split(":", 1)[1] for image in IMAGES if image.startswith("research-agent:")}
        variants = ("basic", "multistage", "optimized")
        suffix = next((tag.removeprefix("basic") for tag in tags if tag.startswith("basic")), "")
        if {f"{variant}{suffix}" for variant in variants} - tags:
            pytest.skip("the doc's commands use all three images: run make smoke without IMAGES")
        commands = doc_commands()
        assert [c.split()[0] for c, _ in commands] == ["docker", "docker", "make", "docker"]
        name, port = f"lesson03-agent-{uuid.uuid4().hex[:8]}", free_port()

        def as_here(text: str) -> str:
            text = re.sub(r"research-agent:(basic|multistage|optimized)\b", rf"\g<0>{suffix}", text)
            text = text.replace("lesson03-agent", name)
            text = text.replace("localhost:8000", f"localhost:{port}")
            return text.replace("127.0.0.1:8000:8000", f"127.0.0.1:{port}:8000")

        env = {k: v for k, v in os.environ.items() if not k.startswith(("MAKE", "OPENAI_"))}
        env |= {"TAG_SUFFIX": suffix, "IMAGES": " ".join(variants)}
        root = DOC.parents[1]
        try:
            for command, shown in commands:
                ran = subprocess.run(
                    ["bash", "-c", as_here(command)],
                    cwd=root,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=300,
                )
                assert ran.returncode == 0, f"{command}\n{ran.stdout}\n{ran.stderr}"
                assert not differences(as_here(shown), ran.stdout), differences(
                    as_here(shown), ran.stdout
                )
        finally:
            docker("rm", "-f", name, check=False)

    @pytest.mark.container
    def test_trust_proxy_ca_adds_a_ca_that_pip_and_python_trust(tmp_path):
        """scripts/trust-proxy-ca.sh: the proxy-CA option, outside the Dockerfiles learners read."""
        if shutil.which("openssl") is None:
            pytest.fail("openssl is needed to make a test CA (Debian package openssl)")
        name = f"course-test-proxy-ca-{uuid.uuid4().hex[:8]}"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
             "-subj", f"/CN={name}", "-keyout", str(tmp_path / "key.pem"),
             "-out", str(tmp_path / "ca.pem")],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        tag = f"{name}:test"
        script = Path(__file__).resolve().parents[2] / "scripts" / "trust-proxy-ca.sh"
        try:
            subprocess.run(
                [str(script), str(tmp_path / "ca.pem"), "python:3.11-slim", tag],
                check=True,
                capture_output=True,
                timeout=300,
            )
            trusted = docker(
                "run", "--rm", "--network", "none", tag, "python", "-c",
                "import os, ssl; ctx = ssl.create_default_context(cafile=os.environ['PIP_CERT']);"
                "print([dict(c['subject'][0])['commonName'] for c in ctx.get_ca_certs()"
                " if len(c['subject']) == 1])",
            )  # fmt: skip
            assert name in trusted
        finally:
            docker("rmi", tag, check=False)


# --- Static checks of the Dockerfiles (no Docker needed: part of `make test`) ---------------------

AGENT_DIR = Path(__file__).resolve().parents[2] / "research-agent"
DOCKERFILES = ["Dockerfile", "Dockerfile.multistage", "Dockerfile.optimized"]
DOCKER_STOP_GRACE_SECONDS = 10  # `docker stop` default


def dockerfile_instructions(name: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (AGENT_DIR / name).read_text())
    lines = [
        line.strip()
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
        for line in lines
    ]


if pytest is not None:

    @pytest.mark.parametrize("name", DOCKERFILES)
    def test_dockerfile_runs_main_in_exec_form_with_a_grace_below_docker_stop(name):
        instructions = dockerfile_instructions(name)
        cmd = [args for op, args in instructions if op == "CMD"][-1]
        argv = json.loads(cmd)  # exec form: a JSON array, so python is PID 1 and gets SIGTERM
        # main.py starts uvicorn with the settings, so GRACEFUL_SHUTDOWN_SECONDS is what bounds
        # the drain (a CMD that hard-codes --timeout-graceful-shutdown would silently ignore it).
        assert argv == ["python", "main.py"]
        from research_agent.settings import ShutdownSettings

        fields = ShutdownSettings.model_fields
        drain = fields["SHUTDOWN_DRAIN_SECONDS"].default
        assert drain + fields["GRACEFUL_SHUTDOWN_SECONDS"].default < DOCKER_STOP_GRACE_SECONDS
        assert ("STOPSIGNAL", "SIGTERM") in instructions
        assert any(op == "ENV" and "PYTHONUNBUFFERED=1" in args for op, args in instructions)

    @pytest.mark.parametrize("name", DOCKERFILES)
    def test_dockerfile_healthcheck_needs_no_curl(name):
        healthcheck = [args for op, args in dockerfile_instructions(name) if op == "HEALTHCHECK"]
        assert len(healthcheck) == 1 and "urllib" in healthcheck[0] and "curl" not in healthcheck[0]
        assert "--start-interval" not in healthcheck[0]  # Docker Engine 25+ only

    @pytest.mark.parametrize("name", DOCKERFILES)
    def test_dockerfile_builds_without_buildkit(name):
        """Compose v1 builds with the classic builder unless told otherwise: no BuildKit syntax."""
        text = (AGENT_DIR / name).read_text()
        assert not text.startswith("# syntax"), "a syntax line makes BuildKit pull a frontend image"
        for op, args in dockerfile_instructions(name):
            assert not (op == "RUN" and args.startswith("--mount")), (
                f"{op} {args[:40]}: BuildKit only"
            )
            assert not (op in ("COPY", "ADD") and "--link" in args), f"{op} --link: BuildKit only"
            assert "<<" not in args, f"{op} with a heredoc: BuildKit only"

    def test_basic_dockerfile_is_the_simplest_that_works():
        """One stage, the real base image by name, no build arguments or secrets to understand."""
        instructions = dockerfile_instructions("Dockerfile")
        assert [args for op, args in instructions if op == "FROM"] == ["python:3.11-slim"]
        assert not [op for op, _ in instructions if op in ("ARG", "USER", "LABEL")]
        assert "secret" not in (AGENT_DIR / "Dockerfile").read_text()

    def test_each_dockerfile_keeps_what_the_one_before_does():
        """multistage and optimized run as the same numeric non-root user, optimized adds to it."""
        multistage = dict(dockerfile_instructions("Dockerfile.multistage"))
        optimized = dockerfile_instructions("Dockerfile.optimized")
        assert multistage["USER"] == "10001:10001" and ("USER", "10001:10001") in optimized
        for step in dockerfile_instructions("Dockerfile.multistage"):
            if step[0] in ("HEALTHCHECK", "STOPSIGNAL", "CMD", "EXPOSE", "WORKDIR"):
                assert step in optimized, f"Dockerfile.optimized drops {step}"

    @pytest.mark.parametrize("name", DOCKERFILES[1:])
    def test_multistage_images_run_as_a_non_root_user(name):
        users = [args for op, args in dockerfile_instructions(name) if op == "USER"]
        assert users and users[-1].split(":")[0] not in ("root", "0")

    def test_dockerignore_is_an_allow_list_that_keeps_env_files_out():
        lines = [
            line
            for line in (AGENT_DIR / ".dockerignore").read_text().splitlines()
            if line and not line.startswith("#")
        ]
        assert lines[0] == "*", "everything is excluded unless allowed"
        allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
        assert allowed == {
            "research_agent",
            "main.py",
            "notes",
            "pyproject.toml",
            "requirements.txt",
            "build-requirements.txt",
        }
