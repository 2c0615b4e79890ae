"""A real PostgreSQL server for a test: ``initdb`` and ``pg_ctl`` in a temporary directory, on a free port,
stopped afterwards. PostgreSQL refuses to run as root: as root, the server runs as the ``postgres``
user (Debian's package makes it) or ``nobody``.

    with postgres_server() as url:    # postgresql://minbert@127.0.0.1:PORT/minbert
        ...
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path


def pg_bin(name: str) -> str | None:
    """A PostgreSQL server program: on PATH, else in Debian's /usr/lib/postgresql/<version>/bin."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_user() -> tuple[list[str], pwd.struct_passwd | None]:
    if os.geteuid() != 0:
        return [], None
    for name in ("postgres", "nobody"):
        try:
            user = pwd.getpwnam(name)
        except KeyError:
            continue
        return ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups", "--"], user
    raise RuntimeError("running as root and no postgres / nobody user to run the server as")


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """A server in its own temporary directory (under the system's, which the server's user can reach
    where pytest's per-user one is closed to it), removed afterwards; yields its database's URL."""
    initdb, pg_ctl = pg_bin("initdb"), pg_bin("pg_ctl")
    if not initdb or not pg_ctl:
        raise RuntimeError("PostgreSQL's initdb / pg_ctl not found (Debian: apt-get install postgresql)")
    prefix, user = _as_user()
    root = Path(tempfile.mkdtemp(prefix="minbert-pg-"))
    data, sockets = root / "data", root / "sockets"
    sockets.mkdir()
    if user is not None:
        for p in (root, sockets):
            os.chown(p, user.pw_uid, user.pw_gid)
    env = {**os.environ, "LC_ALL": "C"}
    run = dict(check=True, capture_output=True, text=True, env=env)
    try:
        subprocess.run([*prefix, initdb, "-D", str(data), "-U", "minbert", "--auth=trust", "-E", "UTF8"], **run)
        port = free_port()
        options = f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off"
        subprocess.run([*prefix, pg_ctl, "-D", str(data), "-o", options, "-l", str(root / "log"), "-w", "start"], **run)
        try:
            url = f"postgresql://minbert@127.0.0.1:{port}"
            import psycopg

            with psycopg.connect(f"{url}/postgres", autocommit=True) as conn:
                conn.execute("CREATE DATABASE minbert")
            yield f"{url}/minbert"
        finally:
            subprocess.run(
                [*prefix, pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"], capture_output=True, env=env
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)
