"""Put the uv that the lock pins into a folder, without pip (`make install` calls it).

Creating a venv with pip and then `pip install uv` costs more than uv then needs to install the
whole lock, so this fetches uv's wheel for this platform straight from the package index (the
standard library is enough), checks its sha256 against the hashes the lock lists for uv, and
unpacks the one binary. Exit status 3 means there is no wheel for this platform: use pip instead.

Usage: python scripts/fetch_uv.py LOCK DEST_DIR
Env:   PIP_INDEX_URL  the index to ask (default https://pypi.org/simple), as pip would
"""

import hashlib
import io
import json
import os
import platform
import re
import sys
import urllib.request
import zipfile
from pathlib import Path

NO_WHEEL = 3


def pinned_uv(lock: Path) -> tuple[str, set[str]]:
    """The uv version and the sha256 hashes that the hash-pinned lock allows for it."""
    block = re.search(r"^uv==(\S+)((?:\s*\\\n\s+--hash=sha256:\w+)+)", lock.read_text(), re.M)
    if not block:
        sys.exit(f"{lock} pins no uv (add uv to the .in file and run make lock)")
    return block[1], set(re.findall(r"sha256:(\w+)", block[2]))


def wheel_matches(filename: str) -> bool:
    machine = platform.machine().lower()
    if sys.platform == "darwin":
        arch = {"arm64": "arm64", "x86_64": "x86_64"}.get(machine)
        return arch is not None and "macosx" in filename and arch in filename
    if sys.platform.startswith("linux"):
        libc = "manylinux" if platform.libc_ver()[0] == "glibc" else "musllinux"
        arch = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64"}.get(machine)
        return arch is not None and libc in filename and filename.endswith(f"{arch}.whl")
    return False


def main(lock: str, dest: str) -> int:
    version, hashes = pinned_uv(Path(lock))
    index = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")
    request = urllib.request.Request(
        f"{index}/uv/", headers={"Accept": "application/vnd.pypi.simple.v1+json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        files = json.load(response)["files"]
    wheels = [
        f
        for f in files
        if f["filename"].startswith(f"uv-{version}-") and wheel_matches(f["filename"])
    ]
    if not wheels:
        print(f"no uv {version} wheel for {sys.platform} {platform.machine()}", file=sys.stderr)
        return NO_WHEEL
    with urllib.request.urlopen(wheels[0]["url"], timeout=120) as response:
        data = response.read()
    digest = hashlib.sha256(data).hexdigest()
    if digest not in hashes:
        sys.exit(f"{wheels[0]['filename']}: sha256 {digest} is not in {lock}: refusing it")
    target = Path(dest) / "uv"
    with zipfile.ZipFile(io.BytesIO(data)) as wheel:
        target.write_bytes(wheel.read(f"uv-{version}.data/scripts/uv"))
    target.chmod(0o755)
    print(f"uv {version} ({wheels[0]['filename']}, sha256 checked against {lock})")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__.split("\n\n")[2])
    sys.exit(main(*sys.argv[1:]))
