"""A PEP 503 package index served over HTTP, as an air-gapped cluster's mirror would: the tests'
pods and servers install from it, never from the internet.

Wheels come from `make_wheel` (a tiny package made here, at any version) or from a wheelhouse
made on the host with `pip download` (`wheelhouse`: tests/e2e_real, bench/dependencies.py).
"""

from __future__ import annotations

import base64
import hashlib
import html
import re
import shutil
import subprocess
import threading
import zipfile
from collections.abc import Iterable
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


def make_wheel(directory: Path, name: str, version: str, module_source: str) -> Path:
    """A pure-Python wheel of one module, `name` with dashes as underscores."""
    module = name.replace("-", "_")
    dist_info = f"{module}-{version}.dist-info"
    files = {
        f"{module}/__init__.py": module_source.encode(),
        f"{dist_info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{dist_info}/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: aliasroll-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record = [
        f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},{len(data)}"
        for path, data in files.items()
    ]
    files[f"{dist_info}/RECORD"] = ("\n".join([*record, f"{dist_info}/RECORD,,"]) + "\n").encode()
    directory.mkdir(parents=True, exist_ok=True)
    wheel = directory / f"{module}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, data in files.items():
            archive.writestr(path, data)
    return wheel


class NoPip(Exception):
    """Making a wheelhouse needs pip on the host."""


def wheelhouse(root: Path, requirements: list[str], image_requirements: Path) -> Path:
    """Wheels for `requirements` and their dependencies, for the host's Python and platform (the
    serving image's), made once per set under `root`. Like a mirror, which has every version, it
    also has the image's versions of the packages the requirements need (image_requirements, a
    pinned requirements file): a server that resolves keeping the image's versions finds them.
    The image's pins are used without their hashes: pip takes a hash in a constraints file as hash
    checking for every requirement, and the test's own requirements list none."""
    image = without_hashes(image_requirements.read_text())
    key = hashlib.sha256("\n".join([*sorted(requirements), image]).encode()).hexdigest()[:16]
    house = root / f"{key}-with-image-pins"
    if (house / ".complete").exists():
        return house
    pip = shutil.which("pip3") or shutil.which("pip")
    if pip is None:
        raise NoPip("making the wheelhouse needs pip on the host")
    house.mkdir(parents=True, exist_ok=True)
    listed = house / "requirements.txt"
    listed.write_text("\n".join(requirements) + "\n")
    download = [
        pip,
        "download",
        "--quiet",
        "--only-binary=:all:",
        "--python-version",
        "3.11",
        "-d",
        str(house),
    ]
    subprocess.run([*download, "-r", str(listed)], check=True)
    # The server itself provides mlflow: the image's pins apply to the rest.
    beyond = house / "beyond-mlflow.txt"
    beyond.write_text("\n".join(line for line in requirements if not line.startswith("mlflow")) + "\n")
    pins = house / "image-pins.txt"
    pins.write_text(image)
    subprocess.run([*download, "-r", str(beyond), "-c", str(pins)], check=True)
    (house / ".complete").write_text("")
    return house


def without_hashes(requirements: str) -> str:
    """A pip requirements file's text with its `--hash` options (and their continuation lines) dropped."""
    joined = re.sub(r"\s*\\\n\s*(?=--hash=)", " ", requirements)
    return "".join(re.sub(r"\s+--hash=\S+", "", line).rstrip() + "\n" for line in joined.splitlines())


def _project(filename: str) -> str:
    # The distribution name of a wheel or sdist file name, normalised (PEP 503).
    stem = filename.split("-")[0] if filename.endswith(".whl") else filename.rsplit("-", 1)[0]
    return re.sub(r"[-_.]+", "-", stem).lower()


class PackageIndex:
    """Serves `files` as /simple/<project>/ pages on `host`, recording every request (`requests`:
    project pages asked while resolving, and files) and the files downloaded (`downloads`)."""

    def __init__(self, root: Path, files: Iterable[Path], *, host: str = "127.0.0.1") -> None:
        self.root = root
        self.host = host
        self.requests: list[str] = []
        self.downloads: list[str] = []
        projects: dict[str, list[Path]] = {}
        (root / "files").mkdir(parents=True, exist_ok=True)
        for file in files:
            target = root / "files" / file.name
            if not target.exists():
                target.write_bytes(file.read_bytes())
            projects.setdefault(_project(file.name), []).append(target)
        for project, found in projects.items():
            page = root / "simple" / project / "index.html"
            page.parent.mkdir(parents=True, exist_ok=True)
            links = "".join(
                f'<a href="/files/{html.escape(f.name)}#sha256={hashlib.sha256(f.read_bytes()).hexdigest()}">'
                f"{html.escape(f.name)}</a><br>\n"
                for f in sorted(found)
            )
            page.write_text(f"<!DOCTYPE html><html><body>\n{links}</body></html>\n")
        self._server: ThreadingHTTPServer | None = None

    def start(self, port: int = 0) -> PackageIndex:
        requests, downloads = self.requests, self.downloads

        class Handler(SimpleHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                requests.append(self.path)
                if self.path.startswith("/files/"):
                    downloads.append(self.path)

        self._server = ThreadingHTTPServer((self.host, port), partial(Handler, directory=str(self.root)))
        threading.Thread(target=self._server.serve_forever, daemon=True, name="package index").start()
        return self

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.server_address[1])

    def url(self, host: str | None = None) -> str:
        return f"http://{host or self.host}:{self.port}/simple"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
