"""Real servers on loopback for tests and benchmarks: an app in a thread, an
``adk-cancel api_server`` (or plain ``adk api_server``) process, and a throwaway Redis."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import httpx
import uvicorn


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _with_spec_version(app: Any, version: str) -> Any:
    async def wrapped(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            scope = {**scope, "asgi": {**scope.get("asgi", {}), "spec_version": version}}
        await app(scope, receive, send)

    return wrapped


@contextmanager
def serve(app: Any, *, spec_version: str | None = None, timeout_s: float = 20) -> Iterator[str]:
    """Run ``app`` on a real uvicorn server in a thread of this process; yields its base URL.

    ``spec_version`` makes the server advertise another ASGI HTTP spec version (Starlette
    notices idle client disconnects itself below 2.4, and only on a failed send from 2.4).
    The thread is named ``uvicorn:PORT`` so a benchmark can read its CPU time.
    """
    port = free_port()
    asgi = _with_spec_version(app, spec_version) if spec_version else app
    # log_config=None: uvicorn's records reach the root logger (and pytest's caplog).
    config = uvicorn.Config(
        asgi, host="127.0.0.1", port=port, log_level="warning", lifespan="on", log_config=None
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=lambda: asyncio.run(server.serve()), daemon=True, name=f"uvicorn:{port}"
    )
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"uvicorn did not start on port {port}")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        if thread.is_alive():
            raise RuntimeError("uvicorn did not stop within 15 s")


class ServerProcess:
    """``adk-cancel api_server AGENTS_DIR [ARGS]`` (or, with ``plain``, ADK's own ``adk
    api_server``) in a child process on a free loopback port, its output in a log file.

    Use as a context manager, or call :meth:`start` and :meth:`stop`. ``args`` are more
    command-line flags (``--session_service_uri``, ``--cancel_backend`` ...); ``env`` adds
    environment variables.
    """

    def __init__(
        self,
        agents_dir: str | Path,
        *args: str,
        log_path: str | Path,
        plain: bool = False,
        env: Mapping[str, str] | None = None,
        port: int | None = None,
    ) -> None:
        self.port = port or free_port()
        self.log_path = Path(log_path)
        module = "google.adk.cli" if plain else "adk_cancel.cli"
        self.argv: list[str] = [
            sys.executable, "-m", module, "api_server",
            "--host", "127.0.0.1", "--port", str(self.port), "--no-reload",
            *args, str(agents_dir),
        ]  # fmt: skip
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None, "not started"
        return self.process.pid

    def start(self, *, wait: bool = True, timeout_s: float = 90) -> ServerProcess:
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.argv, env=self.env, stdout=self._log, stderr=subprocess.STDOUT
        )
        if wait:
            self.wait_ready(timeout_s)
        return self

    def wait_ready(self, timeout_s: float = 90) -> None:
        """Wait until ``GET /list-apps`` answers; raises with the log if the process exits."""
        assert self.process is not None, "not started"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{' '.join(self.argv)} exited with {self.process.returncode}:\n{self.log()}"
                )
            try:
                if httpx.get(self.url + "/list-apps", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"the server did not start within {timeout_s} s:\n{self.log()}")

    def log(self) -> str:
        if self._log is not None:
            self._log.flush()
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def send_signal(self, signum: int) -> None:
        assert self.process is not None, "not started"
        self.process.send_signal(signum)

    def wait(self, timeout_s: float) -> int:
        """The exit code, once the process has ended (``subprocess.TimeoutExpired`` if not)."""
        assert self.process is not None, "not started"
        return self.process.wait(timeout=timeout_s)

    def kill(self) -> None:
        """End the process abruptly, as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self._close_log()

    def stop(self, signum: int = signal.SIGTERM, timeout_s: float = 20) -> int | None:
        """Ask the process to stop (SIGTERM by default), killing it if it does not in time;
        returns its exit code (None if it had to be killed)."""
        code: int | None = None
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signum)
            try:
                code = self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        elif self.process is not None:
            code = self.process.returncode
        self._close_log()
        return code

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> ServerProcess:
        if self.process is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _pong(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """A throwaway ``redis-server`` (no persistence) on a loopback port, which a test can stop
    (SIGKILL: an outage, not a clean shutdown) and start again on the same port."""

    def __init__(self, port: int, workdir: str | Path, *, executable: str | None = None) -> None:
        self.port = port
        self.workdir = Path(workdir)
        found = executable or shutil.which("redis-server")
        if found is None:
            raise RuntimeError("redis-server is not on PATH: apt-get install redis-server")
        self.executable = found
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        assert self.process is None, "already running"
        # The port was free a moment ago; another process may take it before redis-server
        # binds. Retrying is cheaper than a flaky test.
        for _ in range(50):
            self.process = subprocess.Popen(
                [
                    self.executable,
                    "--port", str(self.port),
                    "--bind", "127.0.0.1",
                    "--save", "",
                    "--appendonly", "no",
                    "--dir", str(self.workdir),
                    "--loglevel", "warning",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and self.process.poll() is None:
                if _pong(self.port):
                    return self
                time.sleep(0.01)
            self.process.kill()
            self.process.wait()
            self.process = None
            time.sleep(0.1)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        process.kill()
        process.wait(timeout=10)

    def __enter__(self) -> RedisServer:
        return self.start() if self.process is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _postgres_version(bindir: Path) -> tuple[int, ...]:
    # /usr/lib/postgresql/<major>/bin: the major version is the folder above ``bin``.
    try:
        return tuple(int(part) for part in bindir.parent.name.split("."))
    except ValueError:
        return (0,)


def postgres_bindir() -> Path:
    """The folder of PostgreSQL's ``initdb`` and ``pg_ctl``: Debian's newest
    ``/usr/lib/postgresql/*/bin``, else wherever ``PATH`` has them (Debian keeps them off it)."""
    found = [p.parent for p in Path("/usr/lib/postgresql").glob("*/bin/initdb")]
    if found:
        return max(found, key=_postgres_version)
    initdb = shutil.which("initdb")
    if initdb is not None and shutil.which("pg_ctl", path=str(Path(initdb).parent)):
        return Path(initdb).parent
    raise RuntimeError(
        "PostgreSQL's initdb and pg_ctl are neither under /usr/lib/postgresql/*/bin nor on "
        "PATH: apt-get install postgresql (or put a PostgreSQL bin folder on PATH)"
    )


class PostgresServer:
    """A throwaway PostgreSQL cluster (``initdb -A trust``) in a temporary folder, on a
    loopback port, with one database; :attr:`url` is what ADK's ``DatabaseSessionService``
    (and ``--session_service_uri``) takes. :meth:`stop` ends it and removes the folder.

    PostgreSQL refuses to run as root: as root (CI), the cluster is made and run by the
    unprivileged ``os_user`` (``postgres``, which Debian's package creates), and the folder is
    made in the system's temporary directory, which that user can reach (a pytest ``tmp_path``
    under root's 0700 folders it could not). Durability is turned off: nothing here outlives
    the test, and fsyncs made the chaos test's session writes several times slower.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        database: str = "adk",
        user: str = "adk",
        bindir: str | Path | None = None,
        os_user: str = "postgres",
    ) -> None:
        self._fixed_port = port
        self.port = port or free_port()
        self.database = database
        self.user = user
        self.bindir = Path(bindir) if bindir is not None else postgres_bindir()
        self.os_user = os_user if os.geteuid() == 0 else None
        self.root: Path | None = None

    @property
    def url(self) -> str:
        """``postgresql+asyncpg://user@127.0.0.1:PORT/database`` (trust: no password)."""
        return f"postgresql+asyncpg://{self.user}@127.0.0.1:{self.port}/{self.database}"

    @property
    def data_dir(self) -> Path:
        assert self.root is not None, "not started"
        return self.root / "data"

    def _run(self, *argv: str, as_owner: bool = True) -> None:
        """Run one of PostgreSQL's programs (as the cluster's owner); raises with its output."""
        owner: dict[str, Any] = {}
        if as_owner and self.os_user is not None:
            owner = {"user": self.os_user, "group": self.os_user, "extra_groups": []}
        try:
            subprocess.run(
                [str(self.bindir / argv[0]), *argv[1:]],
                check=True,
                capture_output=True,
                timeout=120,
                cwd=self.root,  # the owner may not be allowed into our working directory
                **owner,
            )
        except subprocess.CalledProcessError as exc:
            output = (exc.stdout or b"").decode(errors="replace")
            output += (exc.stderr or b"").decode(errors="replace")
            log = self.root / "server.log" if self.root is not None else None
            if log is not None and log.exists():
                output += "\n--- server.log ---\n" + log.read_text(errors="replace")[-3000:]
            raise RuntimeError(
                f"PostgreSQL's {argv[0]} failed ({exc.returncode}):\n{output}"
            ) from exc

    def start(self) -> PostgresServer:
        assert self.root is None, "already running"
        self.root = Path(tempfile.mkdtemp(prefix="adk-cancel-pg-"))
        try:
            if self.os_user is not None:
                shutil.chown(self.root, self.os_user, self.os_user)
            self._run("initdb", "-D", str(self.data_dir), "-A", "trust", "-U", self.user,
                      "-E", "UTF8", "--no-locale", "--no-sync")  # fmt: skip
            self._start_server()
            self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user,
                      self.database, as_owner=False)  # fmt: skip
        except BaseException:
            self.stop()
            raise
        return self

    def _start_server(self) -> None:
        # The port was free a moment ago; another process may take it before PostgreSQL
        # binds. A fixed port is the caller's to keep free; a chosen one is chosen again.
        root = self.data_dir.parent
        attempts = 1 if self._fixed_port else 10
        for attempt in range(attempts):
            options = (
                f"-p {self.port} -k {root} -c listen_addresses=127.0.0.1 "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            )
            try:
                self._run("pg_ctl", "-D", str(self.data_dir), "-l", str(root / "server.log"),
                          "-w", "-t", "60", "-o", options, "start")  # fmt: skip
                return
            except RuntimeError:
                if attempt == attempts - 1:
                    raise
                self.port = free_port()

    def stop(self) -> None:
        """Stop the cluster at once (``-m immediate``: it is thrown away) and remove it."""
        root, self.root = self.root, None
        if root is None:
            return
        try:
            if (root / "data" / "postmaster.pid").exists():
                self.root = root
                try:
                    self._run("pg_ctl", "-D", str(root / "data"), "-m", "immediate", "-w", "stop")
                finally:
                    self.root = None
        finally:
            shutil.rmtree(root, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self.start() if self.root is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()
