"""The whole Carina stack as real processes, for end-to-end tests and the demo.

`Stack(workdir).start()` runs: redis-server (AOF), the OpenNebula simulator (`python -m onesim`, process
guests, free XML-RPC and SSH ports), the gunicorn gateway, and N `python worker.py` processes (each
killable with SIGKILL). Helpers create a service, upload a configuration (the example one, or any text,
with the endpoint pointed at this simulator), run `bin/oneenv`, talk to the simulator (fault injection,
VMs by tag), wait for conditions, and stop everything. Use it as a context manager so a failing test
still stops every process.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import xmlrpc.client
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import redis

from functions.cloud.one import OneClient, VmView
from functions.store import envstore, tenants
from tests.harness import RedisServer, free_port, guest_root, project_env, wait_port

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "config" / "examples"
CONTEXT = ROOT / "context"
SIM_AUTH = "oneadmin:onesim"
T = TypeVar("T")


class StackError(RuntimeError):
    """A stack process failed to start or a wait timed out; the message includes the log tail."""


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class Stack:
    """Real processes on free loopback ports; logs in `workdir/*.log`."""

    def __init__(self, workdir: Path, workers: int = 1, env: dict[str, str] | None = None,
                 sim_delay: float = 0.2, clock_skew: bool = False) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.n_workers = workers
        self.redis = RedisServer(workdir / "redis")
        self.port = free_port()
        self.sim_port = free_port()
        self.ssh_port = free_port()
        self.sim_delay = sim_delay
        self.extra_env = dict(env or {})
        self.skew_file = workdir / "clock.skew" if clock_skew else None   # run_minute moves Carina's clock
        if self.skew_file is not None:
            self.extra_env["CARINA_CLOCK_SKEW_FILE"] = str(self.skew_file)
        self.guest_root = guest_root()   # outside every 0700 directory: the guest user reaches its sandboxes
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.workers: list[subprocess.Popen[bytes]] = []
        self._worker_seq = 0
        self._r: redis.Redis | None = None

    # ------------------------------------------------------------ processes

    @property
    def sim_url(self) -> str:
        return f"http://127.0.0.1:{self.sim_port}/RPC2"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """The environment every Carina process of this stack runs with."""
        return project_env(
            REDIS_URL=self.redis.url, CARINA_PORT=str(self.port), CARINA_HOME=str(self.workdir / "home"),
            CARINA_CALLBACK_ADDR=f"127.0.0.1:{self.port}", CARINA_IP=f"127.0.0.1:{self.port}",
            ONESIM_PORT=str(self.sim_port), ONESIM_AUTH=SIM_AUTH, ONESIM_SSH_PORT=str(self.ssh_port),
            CARINA_SSH_PORT=str(self.ssh_port), CARINA_DRAIN_TIME="0", ONESIM_GUEST_ROOT=str(self.guest_root),
            PYTHONUNBUFFERED="1", **self.extra_env)

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.workdir / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(args, cwd=ROOT, env=self.env(), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        log.close()
        return proc

    def start(self) -> Stack:
        """Start everything and wait until each part answers. Stops what started if one part fails."""
        try:
            self.redis.start()
            self.procs["onesim"] = self._spawn("onesim", [
                sys.executable, "-m", "onesim", "--port", str(self.sim_port), "--auth", SIM_AUTH,
                "--guests", "process", "--ssh-port", str(self.ssh_port),
                "--workdir", str(self.workdir / "onesim")])
            self.procs["gateway"] = self._spawn("gateway", [
                str(Path(sys.executable).with_name("gunicorn")), "-c", "config/gunicorn.conf.py", "-b",
                f"127.0.0.1:{self.port}", "-w", "2", "--threads", "4", "--no-control-socket", "gateway:get_app()"])
            self._wait_up("onesim", self.sim_port)
            self._wait_up("gateway", self.port)
            for phase in ("schedule", "prolog", "boot"):
                self.sim_call("onesim.sim.setdelay", phase, self.sim_delay)
            for _ in range(self.n_workers):
                self.start_worker()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_up(self, name: str, port: int, timeout: float = 30.0) -> None:
        try:
            wait_port(port, timeout=timeout)
        except TimeoutError:
            raise StackError(f"{name} did not listen on {port}:\n{_tail(self.workdir / f'{name}.log')}") from None

    def start_worker(self) -> subprocess.Popen[bytes]:
        """Start one more `python worker.py` (it re-drives in-flight environments at start)."""
        self._worker_seq += 1
        proc = self._spawn(f"worker{self._worker_seq}", [sys.executable, "worker.py",
                                                         "--name", f"w{self._worker_seq}-{os.getpid()}"])
        self.workers.append(proc)
        return proc

    def kill_workers(self) -> None:
        """SIGKILL every worker (and its work-horse children): a crash, not a shutdown."""
        for proc in self.workers:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        self.workers.clear()

    def start_scheduler(self, name: str = "scheduler", tick_every: int | None = None) -> subprocess.Popen[bytes]:
        """Start `python -m functions.schedule` (several may run: give each its own `name`)."""
        args = [sys.executable, "-m", "functions.schedule", "--interval", "1"]
        if tick_every is not None:
            args += ["--tick-every", str(tick_every)]
        proc = self._spawn(name, args)
        self.procs[name] = proc
        return proc

    def skew(self) -> float:
        """Seconds by which this stack's Carina processes' clock runs ahead (functions.model.clock.system_clock)."""
        try:
            return float(self.skew_file.read_text()) if self.skew_file else 0.0
        except OSError:
            return 0.0

    def run_minute(self, timeout: float = 60.0) -> int:
        """Move every Carina process's clock to the start of its next minute (the stack made with clock_skew) and
        wait until the minute tick of that minute has run (its closing log line; a scheduler must be started).
        Returns that minute. Never call it while a job's deadline matters: the clock jumps up to a minute."""
        assert self.skew_file is not None, "Stack(clock_skew=True) runs minutes"
        skew = self.skew()
        now = time.time() + skew
        minute = int(now // 60) + 1
        tmp = self.skew_file.with_suffix(".tmp")
        tmp.write_text(repr(skew + minute * 60 + 0.5 - now))
        tmp.replace(self.skew_file)
        done = re.compile(rf"minute tick: .*'minute': {minute}\b")
        wait_for(lambda: any(done.search(p.read_text(errors="replace")) for p in self.workdir.glob("worker*.log")),
                 timeout, f"the minute tick of minute {minute}", every=0.2, stack=self)
        return minute

    def crash_redis(self) -> None:
        """SIGKILL redis-server (what was acknowledged is in the AOF, appendfsync always)."""
        self.redis.kill()
        if self._r is not None:
            self._r.close()
            self._r = None

    def restart_redis(self) -> None:
        """Start redis-server again on the same port and data directory (it reloads the AOF)."""
        self.redis.start()

    def stop(self) -> None:
        """Stop every process (SIGTERM, then SIGKILL) and remove the guests' sandboxes. Safe to run twice."""
        for proc in [*self.workers, *self.procs.values()]:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    continue
        for proc in [*self.workers, *self.procs.values()]:
            try:
                proc.wait(8)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        self.workers.clear()
        self.procs.clear()
        if self._r is not None:
            self._r.close()
            self._r = None
        self.redis.stop()
        shutil.rmtree(self.guest_root, ignore_errors=True)

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------ Carina state and API

    @property
    def r(self) -> redis.Redis:
        if self._r is None:
            self._r = redis.Redis.from_url(self.redis.url, decode_responses=True)
        return self._r

    def add_service(self, name: str = "oneenv1", cls: str = "silver") -> str:
        """Create a service directly in Redis; returns its API token."""
        return tenants.add_service(self.r, name, cls)

    def example_config(self, extra_envs: str = "") -> str:
        """The example config.rb with its endpoint pointed at this simulator, plus `extra_envs` entries."""
        text = (EXAMPLES / "config.rb").read_text()
        text = re.sub(r"http://127\.0\.0\.1:2633/RPC2", self.sim_url, text)
        if extra_envs:
            text = re.sub(r"ENVIRONMENT = \{\n", "ENVIRONMENT = {\n" + extra_envs, text, count=1)
        return text

    def upload(self, token: str, name: str, data: bytes) -> dict[str, Any]:
        """POST /configs?name=NAME with a raw body; returns the JSON answer (raises on HTTP errors)."""
        return self.http("POST", f"/configs?name={name}", token, data)

    def upload_example(self, token: str, extra_envs: str = "", files: dict[str, bytes] | None = None) -> None:
        """Upload the example .vm templates, every shipped context script, `files`, then the config."""
        for path in sorted(EXAMPLES.glob("*.vm")) + sorted(CONTEXT.glob("*.sh")):
            self.upload(token, path.name, path.read_bytes())
        for name, data in (files or {}).items():
            self.upload(token, name, data)
        self.upload(token, "config.rb", self.example_config(extra_envs).encode())

    def http(self, method: str, path: str, token: str, data: bytes | None = None) -> dict[str, Any]:
        req = urllib.request.Request(self.base_url + path, data=data, method=method,  # noqa: S310
                                     headers={"Authorization": f"Bearer {token}", "Accept": "application/json",
                                              "Content-Type": "application/octet-stream"})
        with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310
            body = resp.read()
        return json.loads(body) if body else {}

    def request(self, method: str, path: str, token: str) -> tuple[int, dict[str, Any]]:
        """(HTTP status, JSON body or {}) of a request, errors included (for 4xx checks)."""
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"} if token else {}
        req = urllib.request.Request(self.base_url + path, method=method, headers=headers)  # noqa: S310
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310
                code, body = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            code, body = exc.code, exc.read()
        try:
            return code, json.loads(body) if body else {}
        except ValueError:
            return code, {}

    def status(self, method: str, path: str, token: str) -> int:
        return self.request(method, path, token)[0]

    def oneenv(self, token: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run bin/oneenv against this gateway."""
        env = self.env()
        env.update(CARINA_TOKEN=token, HOME=str(self.workdir))
        proc = subprocess.run([str(ROOT / "bin" / "oneenv"), *args], cwd=self.workdir, env=env,
                              capture_output=True, text=True, timeout=60)
        if check and proc.returncode != 0:
            raise StackError(f"oneenv {' '.join(args)} exited {proc.returncode}: {proc.stderr}{proc.stdout}")
        return proc

    def env_state(self, envid: str) -> dict[str, Any] | None:
        return envstore.get_env(self.r, envid)

    def job(self, jobid: str) -> dict[str, str]:
        return envstore.get_job(self.r, jobid) or {}

    def events(self, envid: str) -> list[str]:
        return [f"{e.get('type')}: {e.get('msg')}" for e in envstore.list_events(self.r, envid)]

    # ------------------------------------------------------------ the simulator

    def sim_call(self, method: str, *args: Any) -> Any:
        """Call a simulator XML-RPC method (session first); returns the result or raises StackError."""
        proxy = xmlrpc.client.ServerProxy(self.sim_url, allow_none=True)
        ok, result, *_ = getattr(proxy, method)(SIM_AUTH, *args)
        if not ok:
            raise StackError(f"{method}{args}: {result}")
        return result

    def one(self) -> OneClient:
        return OneClient(self.sim_url, SIM_AUTH)

    def vms_of(self, envid: str) -> list[VmView]:
        """Live (not DONE) simulator VMs tagged with the environment."""
        return self.one().tagged(str(envid))

    def slots_of(self, envid: str) -> list[str]:
        return sorted(v.user_template.get("CARINA_SLOT", "?") for v in self.vms_of(envid))

    def ssh_show(self, token_service: str, envid: str) -> list[str]:
        """The master's backends, asked over SSH exactly as Carina does (`~/<script> show`)."""
        from functions.cloud import sshexec

        env = self.env_state(envid) or {}
        master = envstore.get_vms(self.r, envid)["m"]
        pem, _ = tenants.service_keypair(self.r, token_service)
        spec = env.get("spec") or {}
        cmd = sshexec.script_command(spec.get("master_context_script", ""), ["show"])
        result, _ = sshexec.run_remote(master.ip, self.ssh_port, spec.get("adminuser", "root"), pem, cmd,
                                       known_key=None, timeout=10)
        return [line for line in result.out.splitlines() if line.strip()]


def wait_for(cond: Callable[[], T], timeout: float = 60.0, what: str = "condition", every: float = 0.2,
             stack: Stack | None = None) -> T:
    """Poll `cond` until it returns something truthy; raise StackError (with worker logs) on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            logs = ""
            if stack is not None:
                logs = "\n".join(f"--- {p.name}\n{_tail(p, 25)}" for p in sorted(stack.workdir.glob("worker*.log")))
            raise StackError(f"timed out after {timeout}s waiting for {what}\n{logs}")
        time.sleep(every)
