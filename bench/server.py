"""Start uvicorn as users run it, watch its memory, and always stop it: for the benchmark and the tests.

The one server starter: bench.suite runs the service and the ceiling app with it, and
tests.server.running_server wraps it for the concurrency and stress tests. Each server runs in
its own session (process group), so stopping it reaches the worker processes too; every server
started is remembered and stopped at exit, even on errors.
"""

import atexit
import contextlib
import ctypes
import http.client
import os
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.record import Rss
from bench.subscribers import raise_fd_limit
from serving import uvicorn_command

ROOT = Path(__file__).resolve().parent.parent
_RUNNING: list["Server"] = []


_LIBC = ctypes.CDLL(None)  # loaded here, not in the forked child


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM if the benchmark itself dies (even by SIGKILL); lift the fd limit."""
    with contextlib.suppress(Exception):
        _LIBC.prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    raise_fd_limit()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _status_kb(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def session_pids(sid: int) -> list[int]:
    """Every live process of the session `sid`: the uvicorn supervisor and its workers."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":  # field 6 of stat: session id
            pids.append(int(entry))
    return pids


@dataclass
class Server:
    """One uvicorn process tree serving `app` on 127.0.0.1."""

    app: str
    env: dict[str, str]
    workers: int
    log_path: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    flags: tuple[str, ...] = ()  # after serving's own flags; uvicorn takes the last of a repeated option

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return uvicorn_command(self.app, self.port, self.workers, *self.flags)

    def start(self, ready_path: str, timeout: float = 60) -> "Server":
        """Start and wait until every worker has started and `ready_path` answers 200."""
        log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            self.command(),
            cwd=ROOT,
            env={**os.environ, **self.env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,  # prctl() and setrlimit() only: safe between fork and exec
        )
        log.close()
        _RUNNING.append(self)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise self._failed("exited at start-up")
            started = self.log_text().count("Application startup complete")
            if started >= self.workers and self._answers(ready_path):
                return self
            if time.monotonic() > deadline:
                raise self._failed(f"did not answer {ready_path} in {timeout}s")
            time.sleep(0.1)

    def _failed(self, what: str) -> RuntimeError:
        return RuntimeError(f"{self.app} {what}; the end of its log ({self.log_path}):\n{self.log_text()[-3000:]}")

    def wait_answering(self, path: str, timeout: float) -> float | None:
        """Seconds until `path` answered 200 again (None if it did not within `timeout`)."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self._answers(path, timeout=min(5.0, timeout)):
                return round(time.monotonic() - started, 1)
            time.sleep(0.5)
        return None

    def _answers(self, path: str, timeout: float = 2) -> bool:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("GET", path)
            return conn.getresponse().status == 200
        except OSError:
            return False
        finally:
            conn.close()

    def pids(self) -> list[int]:
        return session_pids(self.process.pid) if self.process else []

    def rss_kb(self) -> int:
        """Resident memory of the whole process tree now (sum of VmRSS)."""
        return sum(_status_kb(pid, "VmRSS:") for pid in self.pids())

    def cpu_seconds(self) -> float:
        """User + system CPU time used so far by the tree's live processes."""
        total = 0
        for pid in self.pids():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
            except (OSError, ValueError, IndexError):
                continue
        return total / os.sysconf("SC_CLK_TCK")

    def hwm_kb(self) -> int:
        """Sum over the tree's processes of each one's peak resident memory (VmHWM)."""
        return sum(_status_kb(pid, "VmHWM:") for pid in self.pids())

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, grace: float = 3) -> None:
        """SIGTERM uvicorn, which stops its workers, then SIGKILL the whole group after `grace` seconds.

        uvicorn's graceful shutdown waits for requests in flight, which a stalled server never finishes.
        """
        if self.process is None:
            return
        pgid = self.process.pid
        self.process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=grace)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)
        self.process = None
        if self in _RUNNING:
            _RUNNING.remove(self)

    def kill(self) -> None:
        """SIGKILL every process of the tree at once, as a crash or an OOM kill would: no shutdown runs."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)
        self.process = None
        if self in _RUNNING:
            _RUNNING.remove(self)


def stop_all() -> None:
    """Stop every server this process started and has not stopped yet."""
    for server in list(_RUNNING):
        server.stop()


atexit.register(stop_all)


class RssSampler:
    """Samples the tree's resident memory every `interval` seconds while a scenario runs."""

    def __init__(self, server: Server, interval: float = 0.1) -> None:
        self.server, self.interval = server, interval
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(self.server.rss_kb())
            self._stop.wait(self.interval)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append(self.server.rss_kb())

    def summary(self) -> Rss:
        mb = [s / 1024 for s in self.samples if s] or [0.0]
        return Rss(start_mb=round(mb[0], 1), end_mb=round(mb[-1], 1), peak_mb=round(max(mb), 1))


def service_env(database_url: str, admin_token: str, hold_ttl_seconds: str) -> dict[str, str]:
    """The settings every benchmark runs the service with (bench.suite and bench.fanout)."""
    return {
        "DATABASE_URL": database_url,
        "ADMIN_TOKEN": admin_token,
        "SEED_DEMO_DATA": "false",
        "HOLD_TTL_SECONDS": hold_ttl_seconds,
        # The scenarios' users hold and re-hold at will; the limits' SQL still runs on every hold.
        "HOLD_MAX_ACTIVE_PER_USER": "10000",
        "HOLD_REHOLD_COOLDOWN_SECONDS": "0",
        # Limits high enough never to refuse, so every hold still pays for the check; no access log, as before.
        "RATE_LIMIT_SIGNUPS": "1000000/minute",
        "RATE_LIMIT_HOLDS": "1000000/minute",
        "ACCESS_LOG": "false",
    }
