"""A real dataset mirror on 127.0.0.1 for the download tests: no internet needed, nothing mocked.

`serve_mirror(folder)` serves a data root's layout (`MNIST/raw/<file>`) over HTTP from a thread, as
GENSEARCH_DATA_MIRROR expects, records every path asked for, and can cut chosen files off mid-stream
(the server promises the whole file, sends half, and closes): a dropped connection.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from trainables import data

SHARED = Path(data.__file__).resolve().parents[1].parent / "shared" / "data"


@dataclass
class Mirror:
    url: str
    requests: list[str] = field(default_factory=list)  # paths asked for, in order
    cut: set[str] = field(default_factory=set)  # file names sent only half way


class _Handler(http.server.SimpleHTTPRequestHandler):
    mirror: Mirror

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.mirror.requests.append(self.path)
        path = Path(self.translate_path(self.path))
        if path.name in self.mirror.cut and path.is_file():
            blob = path.read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(blob)))
            self.end_headers()
            self.wfile.write(blob[: len(blob) // 2])
            self.close_connection = True
            return
        super().do_GET()

    def log_message(self, *args: object) -> None:  # keep test output clean
        pass


@contextmanager
def serve_mirror(folder: Path) -> Iterator[Mirror]:
    """Serve `folder` on a free port of 127.0.0.1 until the block ends."""
    mirror = Mirror(url="")
    handler = type("MirrorHandler", (_Handler,), {"mirror": mirror})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(folder)))
    mirror.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, name="dataset-mirror", daemon=True)
    thread.start()
    try:
        yield mirror
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def copy_dataset(root: Path, folder: str = "MNIST") -> Path:
    """The shared archives of one dataset copied into `root` (a data root or a mirror folder)."""
    shutil.copytree(SHARED / folder, root / folder)
    return root / folder / "raw"


def flip_byte(path: Path, mtime_ns: int | None = None) -> None:
    """Corrupt a file in its middle (same size); `mtime_ns` sets its mtime afterwards."""
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    path.write_bytes(bytes(blob))
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()


def leftovers(cache: Path) -> list[str]:
    """Files in a cache that are not a complete, verified archive or the verified record: what a bad
    download must never leave behind."""
    bad = []
    for path in sorted(p for p in cache.rglob("*") if p.is_file()):
        expected = data._MD5.get((path.parent.parent.name, path.name))
        if path.name != "verified.json" and (expected is None or md5_of(path) != expected):
            bad.append(str(path.relative_to(cache)))
    return bad
