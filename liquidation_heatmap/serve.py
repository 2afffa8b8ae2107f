"""Datasette over the built file: served immutable, with the project's config, metadata, templates and plugins;
a busy port refused at once; no inspect file left behind."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import sqlite3
import sys
import tempfile
from pathlib import Path

from .incremental import sqlite_build_id
from .options import ServeOptions
from .project import DATA_DIR, DEFAULT_DB, DEMO_DIR, ROOT, BuildError, command_line, log, shown


def serve_command(db_path: Path, port: int, host: str = "127.0.0.1") -> list[str]:
    """`datasette serve` of the built file, immutable, with exact row counts (Datasette's own stop at 10,000)."""
    return [sys.executable, "-m", "datasette", "serve", "-i", str(db_path), "--host", host, "--port", str(port),
            "--inspect-file", str(inspect_file(db_path)),
            "--metadata", str(ROOT / "metadata.yml"), "--config", str(ROOT / "datasette.yaml"),
            "--template-dir", str(ROOT / "templates"), "--plugins-dir", str(ROOT / "plugins")]


def inspect_file(db_path: Path) -> Path:
    """What `datasette inspect` writes, counted from the file itself just now (so it cannot be stale), without
    hashing the whole file: the build's id stands for the hash, which Datasette only shows."""
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as con:
        counts = {name: {"count": count} for name, count in row_counts(con).items()}
    data = {db_path.stem: {"hash": sqlite_build_id(db_path) or "", "size": db_path.stat().st_size,
                           "file": str(db_path), "tables": counts}}
    path = inspect_path(db_path)
    path.write_text(json.dumps(data))
    return path


def row_counts(con: sqlite3.Connection) -> dict[str, int]:
    """Every table's exact row count (plugins/fresh_database.py counts a new build's with it too)."""
    names = [name for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    return {name: con.execute(f"SELECT count(*) FROM [{name}]").fetchone()[0] for name in names}


def inspect_path(db_path: Path) -> Path:
    return Path(tempfile.gettempdir()) / f"liquidation-heatmap-{os.getpid()}-{db_path.stem}.inspect.json"


def check_port_free(host: str, port: int) -> None:
    """Fail before anything is served when Datasette could not listen: uvicorn would start the application, say
    so, and only then fail to bind. Binds every address the host names as asyncio's server does (SO_REUSEADDR,
    IPv6 alone on IPv6), so a port held only by closed connections in TIME_WAIT counts as free, as for uvicorn.
    (Another program may still take the port in the instant between this check and Datasette's bind: uvicorn's
    own error then stands.)"""
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as error:
        raise BuildError(f"--host {host}: {error.strerror}") from None
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                probe.bind(address)
            except OSError as error:
                if error.errno == errno.EADDRINUSE:
                    raise BuildError(f"port {port} on {host} is already in use (another server, perhaps another "
                                     f"`serve`?): stop it, or serve on another port with --port") from None
                raise BuildError(f"cannot listen on port {port} on {host}: {error.strerror}"
                                 + (" (ports below 1024 need privileges: choose another with --port)"
                                    if error.errno == errno.EACCES else "")) from None


def serve(options: ServeOptions) -> None:
    db_path = built_db(options.db)
    if not db_path.exists():
        raise BuildError(f"no database at {shown(db_path)}: build it first with\n  " + (
            command_line("build", "--data", "FOLDER", "--db", shown(db_path)) if options.db else
            f"{command_line()}\n(which builds the Binance files under {shown(DATA_DIR)}, or the demo without them)"))
    check_port_free(options.host, options.port)
    # Datasette runs in this process, not exec'd, so that the inspect file it reads at start is removed however
    # it ends: stopped (Ctrl-C and SIGTERM, which uvicorn turns into a graceful shutdown and then raises again,
    # reaching the handler set here; SIGHUP, a closed terminal, is taken as SIGTERM) or failed (uvicorn and
    # click exit through here).
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    signal.signal(signal.SIGHUP, lambda signum, frame: signal.raise_signal(signal.SIGTERM))
    try:
        command = serve_command(db_path, options.port, options.host)
        address = f"[{options.host}]" if ":" in options.host else options.host   # (an IPv6 address in a URL: bracketed)
        log(f"serving {db_path} at http://{address}:{options.port}/ (the heatmap: /heatmap; Ctrl-C to stop)")
        from datasette.cli import cli
        cli.main(args=command[command.index("serve"):], prog_name="datasette")
    except KeyboardInterrupt:   # (Ctrl-C before Datasette has set up its own handling)
        raise SystemExit(128 + signal.SIGINT) from None
    finally:
        inspect_path(db_path).unlink(missing_ok=True)


def built_db(db: Path | None) -> Path:
    """--db, or the database `python build.py` built: the real data's, else the demo's."""
    if db:
        return db
    return next((path for path in (DEFAULT_DB, DEMO_DIR / DEFAULT_DB.name) if path.exists()), DEFAULT_DB)
