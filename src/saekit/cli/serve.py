"""``saekit serve``: a dashboard folder over HTTP on this machine only (127.0.0.1)."""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import ConfigError


def register(sub: Any) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a dashboard folder on localhost",
        description="Serve a folder written by `saekit dashboard` at http://127.0.0.1:PORT/ until Ctrl-C. Only this "
        "machine can reach it; to look from another, forward the port (ssh -L PORT:127.0.0.1:PORT HOST). "
        "The same folder also opens without a server, from its file:// URL.",
    )
    p.add_argument("folder", metavar="DIR", help="a folder written by saekit dashboard --out DIR")
    p.add_argument("--port", type=int, default=8000, help="the port (default 8000; 0 picks a free one)")
    p.set_defaults(func=run)


def run(ns: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    if not 0 <= ns.port <= 65535:
        raise ConfigError(f"--port must be between 0 and 65535 (0: a free one), got {ns.port}")
    server = dashboard_server(Path(ns.folder), ns.port)
    host, port = server.server_address[:2]
    # Flushed at once: a script (or a test) starting this reads the URL from the first line.
    print(f"serving {ns.folder} at http://{host}:{port}/ (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
    finally:
        server.server_close()
    return 0


def dashboard_server(folder: Any, port: int) -> Any:
    """An HTTP server on 127.0.0.1:``port`` for the dashboard in ``folder`` (not started).

    Refuses a folder without a complete dashboard, and a port in use, with a clear error.
    It serves the folder's files only, never its hidden ones (the lock file, a half-built
    ``.partial``), and tells the browser to revalidate, so a rewritten dashboard shows at once.
    """
    import errno
    import functools
    import logging
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
    from pathlib import Path
    from urllib.parse import unquote, urlsplit

    from ..errors import DataError
    from ..interpret.dashboard import is_complete_dashboard, is_dashboard

    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder; give the --out folder of saekit dashboard")
    if not is_complete_dashboard(folder):
        why = ("holds an unfinished dashboard (its run was interrupted?)" if is_dashboard(folder)
               else "holds no dashboard (no index.html and dashboard.json written by saekit dashboard)")
        raise DataError(f"{folder} {why}; write one with `saekit dashboard DICT --out {folder}`")
    log = logging.getLogger("saekit.serve")

    class Handler(SimpleHTTPRequestHandler):
        def send_head(self) -> Any:
            parts = unquote(urlsplit(self.path).path).split("/")
            if any(part.startswith(".") and part not in (".", "") for part in parts):
                self.send_error(404, "File not found")
                return None
            return super().send_head()

        def end_headers(self) -> None:
            self.send_header("Cache-Control", "no-cache")
            super().end_headers()

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
            log.info("%s %s", self.address_string(), format % args)

    try:
        return ThreadingHTTPServer(("127.0.0.1", port), functools.partial(Handler, directory=str(folder)))
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise ConfigError(f"port {port} is in use; choose another --port, or --port 0 for a free one") from None
        raise ConfigError(f"cannot listen on 127.0.0.1:{port}: {e.strerror or e}") from None
