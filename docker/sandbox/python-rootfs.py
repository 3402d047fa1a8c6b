"""Copy this image's Python into an empty root file system: the interpreter, the standard library
(byte-compiled, without tests, IDLE, tkinter, ensurepip or any installed package such as pip) and
exactly the shared libraries they link against, found with ldd. Nothing else: no shell, no
coreutils, no package manager, no setuid binaries.

Usage (in the builder stage of docker/sandbox/Dockerfile):  python python-rootfs.py /rootfs
It uses the paths of whichever Python runs it, so the same file works on the official image
(/usr/local) and on Debian's Python (/usr).
"""

import compileall
import os
import py_compile
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

# Folders of the standard library the sandbox does without (installed packages, pip included).
SKIP = {"test", "tests", "idle_test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3"}
SKIP |= {"site-packages", "dist-packages", "config-3.11-x86_64-linux-gnu"}


def copy_file(source: Path, root: Path) -> None:
    """Copy a file to the same path under root; a symlink is copied as the file it names."""
    target = root / str(source).lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source.resolve(), target)


def shared_libraries(binaries: list[Path]) -> set[Path]:
    """Every library the binaries load, as ldd resolves it (the path the loader will look for)."""
    found = set()
    for binary in binaries:
        out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True).stdout
        found |= {Path(p) for p in re.findall(r"(?:=>\s+)?(/\S+)\s+\(0x", out)}
    return found


def main(root: Path) -> None:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    executable = Path(sys.executable).resolve()

    # Byte-code for the whole standard library: a read-only container could not write it, so every
    # run would compile what it imports again.
    unchecked = py_compile.PycInvalidationMode.UNCHECKED_HASH  # the image never changes
    skipped = re.compile("/(" + "|".join(map(re.escape, SKIP)) + ")/")
    compileall.compile_dir(stdlib, quiet=1, workers=0, rx=skipped, invalidation_mode=unchecked)
    for directory, subdirs, files in os.walk(stdlib):
        subdirs[:] = [d for d in subdirs if d not in SKIP]
        for name in files:
            path = Path(directory, name)
            if path.exists():  # Debian's sitecustomize.py is a link into /etc: left out
                copy_file(path, root)
    dynload = list(stdlib.rglob("lib-dynload/*.so"))

    copy_file(executable, root)
    for library in shared_libraries([executable, *dynload]):
        copy_file(library, root)
    # The loader's cache finds libraries outside its default folders (/usr/local/lib).
    if Path("/etc/ld.so.cache").exists():
        copy_file(Path("/etc/ld.so.cache"), root)
    # LANG=C.UTF-8 without the locales package.
    if Path("/usr/lib/locale/C.utf8").is_dir():
        shutil.copytree(
            "/usr/lib/locale/C.utf8", root / "usr/lib/locale/C.utf8", dirs_exist_ok=True
        )

    # `python` on PATH, whatever the base image calls its interpreter.
    bin_dir = root / "usr/local/bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name in ("python", "python3"):
        link = bin_dir / name
        if not (link.exists() or link.is_symlink()):
            link.symlink_to(executable)
    # Numeric ids resolve to names (getpass, ~), and /tmp exists to mount the tmpfs on.
    (root / "etc").mkdir(exist_ok=True)
    nobody = "nobody:x:65534:65534:nobody:/tmp:/nonexistent"
    (root / "etc/passwd").write_text(f"root:x:0:0:root:/root:/nonexistent\n{nobody}\n")
    (root / "etc/group").write_text("root:x:0:\nnogroup:x:65534:\n")
    (root / "tmp").mkdir(mode=0o1777, exist_ok=True)
    os.chmod(root / "tmp", 0o1777)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
