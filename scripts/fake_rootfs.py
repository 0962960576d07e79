"""Lay out a minimal root filesystem that runs this repository's fake vLLM server.

Used by scripts/build_fake_image.sh, which tars the folder and `docker import`s
it: no registry is reachable, so no base image can be pulled. The filesystem
holds the running interpreter (binary, libpython, a trimmed standard library,
the C libraries they link), the installed distributions named on the command
line with everything they require, and this repository's ``fake_vllm``
package (the gateway itself is not needed inside). Run it with the project's venv interpreter so that the distributions
are found where the gateway itself finds them.

    python scripts/fake_rootfs.py OUT_DIR SRC_PACKAGE_DIR [DIST ...]
"""

from __future__ import annotations

import importlib.metadata as md
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

PREFIX = Path("usr/local")
PY_VERSION = f"python{sys.version_info.major}.{sys.version_info.minor}"
# Parts of the standard library a web server never imports; dropping them
# takes the image from ~100 MB to a few tens.
STDLIB_SKIP = {
    "test",
    "idlelib",
    "tkinter",
    "turtledemo",
    "ensurepip",
    "lib2to3",
    "pydoc_data",
    "distutils",
    "site-packages",
    "venv",
    "curses",
    "dbm",
    "sqlite3",
    "unittest",
    "xmlrpc",
    "wsgiref",
}
LIBDIR_SKIP = re.compile(r"^config-")
DYNLOAD_SKIP = re.compile(
    r"^(_tkinter|_curses|_curses_panel|_dbm|_gdbm|_sqlite3|readline|_test|xx)"
)
REQ_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def shared_libs(binary: Path) -> list[Path]:
    """The shared libraries ``binary`` loads, as the dynamic linker names them."""
    out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=False)
    found: list[Path] = []
    for line in out.stdout.splitlines():
        parts = line.split()
        if "=>" in parts:
            target = parts[parts.index("=>") + 1]
            if target.startswith("/"):
                found.append(Path(target))
        elif parts and parts[0].startswith("/"):
            found.append(Path(parts[0]))  # the dynamic linker itself
    return found


def copy_file(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, dst, follow_symlinks=True)


def copy_tree(src: Path, dst: Path) -> None:
    def ignore(folder: str, names: list[str]) -> set[str]:
        # Only the plain bytecode of this interpreter: optimized variants double the size.
        return {n for n in names if ".opt-" in n}

    shutil.copytree(src, dst, ignore=ignore, symlinks=False, dirs_exist_ok=True)


def strip_binaries(out: Path) -> None:
    """Drop debug symbols from the copies (libpython alone shrinks from ~23 MB to ~5)."""
    strip = shutil.which("strip")
    if strip is None:
        return  # binutils absent: a bigger image, still a working one
    targets = [
        p
        for p in out.rglob("*")
        if p.is_file() and not p.is_symlink() and (".so" in p.name or p.name == "python3")
    ]
    subprocess.run(
        [strip, "--strip-unneeded", *map(str, targets)], capture_output=True, check=False
    )


def required_dists(roots: list[str]) -> list[md.Distribution]:
    """``roots`` and every distribution they require, extras left out."""
    seen: dict[str, md.Distribution] = {}
    todo = list(roots)
    while todo:
        name = todo.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in seen:
            continue
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            # A requirement for another Python version or platform is simply absent.
            continue
        seen[key] = dist
        for req in dist.requires or []:
            if "extra ==" in req:
                continue
            match = REQ_NAME.match(req)
            if match:
                todo.append(match.group(1))
    return list(seen.values())


def copy_dist(dist: md.Distribution, site: Path) -> None:
    base = Path(str(dist.locate_file("")))
    for rel in dist.files or []:
        src = Path(str(dist.locate_file(rel)))
        if ".." in rel.parts or not src.is_file() or ".opt-" in src.name:
            continue  # console scripts and the like live outside site-packages
        copy_file(src, site / src.relative_to(base))


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    out, src_pkg, roots = Path(argv[1]), Path(argv[2]), argv[3:]
    if out.exists():
        shutil.rmtree(out)
    # The real interpreter behind the venv.
    binary = Path(getattr(sys, "_base_executable", sys.executable)).resolve()
    stdlib = Path(sysconfig.get_paths(vars={"base": sys.base_prefix})["stdlib"])
    lib = out / PREFIX / "lib"

    copy_file(binary, out / PREFIX / "bin" / "python3")
    os.symlink("python3", out / PREFIX / "bin" / "python")
    libs = set(shared_libs(binary))
    for so in (stdlib / "lib-dynload").glob("*.so"):
        if not DYNLOAD_SKIP.match(so.name):
            libs.update(shared_libs(so))
    for item in stdlib.iterdir():
        if item.name in STDLIB_SKIP or LIBDIR_SKIP.match(item.name):
            continue
        if item.is_dir():
            copy_tree(item, lib / PY_VERSION / item.name)
        else:
            copy_file(item, lib / PY_VERSION / item.name)
    dynload = lib / PY_VERSION / "lib-dynload"
    for so in list(dynload.glob("*.so")):
        if DYNLOAD_SKIP.match(so.name):
            so.unlink()
    for so_path in libs:
        if so_path.name.startswith("libpython"):
            copy_file(so_path, lib / so_path.name)  # found through LD_LIBRARY_PATH
        else:
            copy_file(so_path, out / so_path.relative_to("/"))

    site = lib / PY_VERSION / "site-packages"
    site.mkdir(parents=True, exist_ok=True)
    for dist in required_dists(roots):
        copy_dist(dist, site)
    copy_tree(src_pkg, site / src_pkg.name)

    etc = out / "etc"
    etc.mkdir(parents=True, exist_ok=True)
    (etc / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n"
    )
    (etc / "group").write_text("root:x:0:\nnogroup:x:65534:\n")
    for folder in ("tmp", "root", "proc", "sys", "dev"):
        (out / folder).mkdir(exist_ok=True)
    (out / "tmp").chmod(0o1777)
    strip_binaries(out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
