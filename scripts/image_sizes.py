"""Print the sizes of the research agent's images next to their floor (`make sizes`).

The floor is what no Dockerfile can go below: the base image plus the runtime dependencies as
installed files (without byte-code caches). It is measured inside research-agent:optimized, whose
venv holds exactly the locked dependencies. Sizes are in MB (10^6 bytes), as `docker images` shows.
"""

import json
import subprocess
import sys

BASE = "python:3.11-slim"
VARIANTS = ["basic", "multistage", "optimized"]
SANDBOX = "agent-sandbox:python"  # the image lesson 04's tools run code in (docker/sandbox)
VENV = "/opt/venv/lib/python3.11/site-packages"

# Runs inside the optimized image: bytes of every installed package, split into files and .pyc.
MEASURE = f"""
import json, os
site = {VENV!r}
sizes, pyc = {{}}, 0
for top in os.listdir(site):
    path = os.path.join(site, top)
    name = top.split("-")[0].lower() if top.endswith(".dist-info") else top
    for d, _, files in os.walk(path) if os.path.isdir(path) else [(site, [], [top])]:
        for f in files:
            n = os.lstat(os.path.join(d, f)).st_size
            if f.endswith(".pyc"):
                pyc += n
            else:
                sizes[name] = sizes.get(name, 0) + n
print(json.dumps({{"packages": sizes, "pyc": pyc}}))
"""


def docker(*args: str) -> str:
    return subprocess.run(
        ["docker", *args], check=True, capture_output=True, text=True, timeout=120
    ).stdout.strip()


def image_size(tag: str) -> int | None:
    try:
        return int(docker("image", "inspect", tag, "--format", "{{.Size}}"))
    except subprocess.CalledProcessError:
        return None


def mb(n: float) -> str:
    return f"{n / 1e6:,.0f}"


def main() -> int:
    base = image_size(BASE)
    sizes = {v: image_size(f"research-agent:{v}") for v in VARIANTS}
    if base is None or sizes["optimized"] is None:
        print(f"need {BASE} and research-agent:optimized: run `make build` first", file=sys.stderr)
        return 1
    measured = json.loads(
        docker("run", "--rm", "--entrypoint", "python", "research-agent:optimized", "-c", MEASURE)
    )
    deps = sum(measured["packages"].values())
    floor = base + deps

    print(f"| image | size MB | % of basic | vs floor ({mb(floor)} MB) |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| {BASE} (base) | {mb(base)} | | |")
    print(f"| floor: base + runtime dependencies, no .pyc | {mb(floor)} | | |")
    for variant, size in sizes.items():
        if size is None:
            print(f"| research-agent:{variant} | not built | | |")
            continue
        of_basic = f"{100 * size / sizes['basic']:.0f}%" if sizes["basic"] else ""
        vs_floor = f"{100 * (size - floor) / floor:+.1f}%"
        print(f"| research-agent:{variant} | {mb(size)} | {of_basic} | {vs_floor} |")

    sandbox = image_size(SANDBOX)
    shown = f"{mb(sandbox)} | {100 * sandbox / base:.0f}% of the base" if sandbox else "not built |"
    print(f"| {SANDBOX} (lesson 04: Python only, no shell or pip) | {shown} | |")

    print(
        f"\nRuntime dependencies: {mb(deps)} MB of files, "
        f"plus {mb(measured['pyc'])} MB of .pyc in the optimized image."
    )
    print("Largest installed packages (MB, without .pyc):")
    top = sorted(measured["packages"].items(), key=lambda kv: -kv[1])[:12]
    print("  " + ", ".join(f"{name} {n / 1e6:.1f}" for name, n in top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
