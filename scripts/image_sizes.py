"""`make sizes`: the research agent's image sizes, and where the optimized image's bytes went.

The floor is the base image plus the runtime dependencies as pip installs them, without byte-code
and without pip itself: what a Dockerfile that only copies the dependencies would weigh. It is
measured inside research-agent:multistage, whose venv holds the lock exactly as pip installed it.
The optimized image goes below it by stripping symbols from extension modules and deleting the
packages' test suites, then adds back the byte-code it writes at build time; each of those is
measured by walking both images' files. Sizes are in MB (10^6 bytes), as `docker images` shows them.
"""

import json
import os
import subprocess
import sys

BASE = "python:3.11-slim"
VARIANTS = ["basic", "multistage", "optimized"]
SANDBOX = "agent-sandbox:python"  # the image lesson 04's tools run code in (docker/sandbox)
SUFFIX = os.environ.get("TAG_SUFFIX", "")
INSTALLERS = {"pip", "setuptools", "_distutils_hack", "pkg_resources", "distutils-precedence.pth"}

# Runs inside an image: bytes of the venv by kind, and of the byte-code written outside the venv.
MEASURE = """
import json, os, sysconfig
site = "/opt/venv/lib/python3.11/site-packages"
installers = set(json.loads(os.environ["INSTALLERS"]))
out = {"files": 0, "pyc": 0, "so": 0, "tests": 0, "installers": 0, "outside_pyc": 0, "packages": {}}
for top in os.listdir(site):
    name = top.split("-")[0] if top.endswith(".dist-info") else top
    path = os.path.join(site, top)
    walk = os.walk(path) if os.path.isdir(path) else [(site, [], [top])]
    for folder, _, files in walk:
        for f in files:
            n = os.lstat(os.path.join(folder, f)).st_size
            if f.endswith(".pyc"):
                out["pyc"] += n
                continue
            if name in installers:
                out["installers"] += n
                continue
            out["files"] += n
            out["packages"][name.lower()] = out["packages"].get(name.lower(), 0) + n
            if "/tests/" in folder + "/":
                out["tests"] += n
            elif f.endswith(".so") and ".libs" not in folder:
                out["so"] += n
for root in (sysconfig.get_path("stdlib"), "/app"):
    for folder, _, files in os.walk(root):
        out["outside_pyc"] += sum(
            os.lstat(os.path.join(folder, f)).st_size for f in files if f.endswith(".pyc")
        )
print(json.dumps(out))
"""


def docker(*args: str) -> str:
    return subprocess.run(
        ["docker", *args], check=True, capture_output=True, text=True, timeout=180
    ).stdout.strip()


def image_size(tag: str) -> int | None:
    try:
        return int(docker("image", "inspect", tag, "--format", "{{.Size}}"))
    except subprocess.CalledProcessError:
        return None


def measure(tag: str) -> dict:
    return json.loads(
        docker(
            "run", "--rm", "--network", "none", "--entrypoint", "python",
            "-e", f"INSTALLERS={json.dumps(sorted(INSTALLERS))}", tag, "-c", MEASURE,
        )
    )  # fmt: skip


def mb(n: float, sign: bool = False) -> str:
    return f"{n / 1e6:+,.1f}" if sign else f"{n / 1e6:,.0f}"


def main() -> int:
    tags = {v: f"research-agent:{v}{SUFFIX}" for v in VARIANTS}
    base = image_size(BASE)
    sizes = {v: image_size(tag) for v, tag in tags.items()}
    if base is None or None in sizes.values():
        print(f"need {BASE} and {', '.join(tags.values())}: run `make build`", file=sys.stderr)
        return 1
    plain, optimized = measure(tags["multistage"]), measure(tags["optimized"])
    floor = base + plain["files"]

    print(f"| image | size MB | of basic | vs floor ({mb(floor)} MB) |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| {BASE} (base) | {mb(base)} | | |")
    print(f"| floor: base + runtime dependencies, no .pyc | {mb(floor)} | | |")
    for variant, size in sizes.items():
        print(
            f"| {tags[variant]} | {mb(size)} | {size / sizes['basic']:.2f}x"
            f" | {100 * (size - floor) / floor:+.1f}% |"
        )
    sandbox = image_size(SANDBOX)
    shown = "not built | |"
    if sandbox:
        shown = f"{mb(sandbox)} | | {100 * sandbox / base:.0f}% of the base"
    print(f"| {SANDBOX} (lesson 04: Python only, no shell or pip) | {shown} |")

    stripped = plain["so"] - optimized["so"]
    tests = plain["tests"] - optimized["tests"]
    pyc = optimized["pyc"] + optimized["outside_pyc"]
    other = sizes["optimized"] - (floor - stripped - tests + pyc)
    print(f"\nWhere the bytes of {tags['optimized']} went (MB):")
    print("| step | MB |")
    print("| --- | ---: |")
    print(f"| base image | {mb(base)} |")
    deps = mb(plain["files"], True)
    print(f"| + runtime dependencies as installed (.py, .so, data; no .pyc) | {deps} |")
    print(f"| - symbols stripped from extension modules (.so) | {mb(-stripped, True)} |")
    print(f"| - the packages' own test suites | {mb(-tests, True)} |")
    print(f"| + byte-code written at build time (libraries, stdlib, app) | {mb(pyc, True)} |")
    print(f"| + the rest: app code, notes, user, metadata | {mb(other, True)} |")
    print(f"| = {tags['optimized']} | {mb(sizes['optimized'])} |")
    print(
        f"\nFor comparison, {tags['multistage']} carries {mb(plain['pyc'])} MB of byte-code for"
        f" every installed module and {mb(plain['installers'])} MB of pip and setuptools."
    )
    print("Largest installed packages (MB, as installed, without .pyc):")
    top = sorted(plain["packages"].items(), key=lambda kv: -kv[1])[:12]
    print("  " + ", ".join(f"{name} {n / 1e6:.1f}" for name, n in top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
