#!/usr/bin/env python3
"""`make demo`: start the whole stack (Procfile under honcho) on the embedded simulator and build the
example tomcat environment (1 master + 2 slaves) through the `oneenv` CLI, then print what it shows.

Options: --keep leaves the stack running afterwards (stop it with Ctrl-C).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from onesim.sandbox import forget  # noqa: E402

DEFAULTS = {"CARINA_PORT": "4567", "REDIS_PORT": "6379", "ONESIM_PORT": "2633", "ONESIM_SSH_PORT": "2222"}


def say(msg: str) -> None:
    print(f"\n==> {msg}", flush=True)


def port_busy(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def demo_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}  # the stack's own Redis, with its password
    for name, value in DEFAULTS.items():
        env.setdefault(name, value)
    home = ROOT / "var" / "demo"
    env.update({
        "CARINA_HOME": str(home),
        "CARINA_IP": f"127.0.0.1:{env['CARINA_PORT']}",
        "CARINA_CALLBACK_ADDR": f"127.0.0.1:{env['CARINA_PORT']}",
        "CARINA_SSH_PORT": env["ONESIM_SSH_PORT"],
        "PATH": f"{ROOT / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        "PYTHONPATH": str(ROOT),
        "PYTHONUNBUFFERED": "1",
    })
    return env


def wait_health(port: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:  # noqa: S310
                if resp.status == 200:
                    return
        except OSError as exc:
            last = str(exc)
        time.sleep(0.5)
    raise SystemExit(f"the gateway did not become healthy in {timeout:.0f}s ({last}); see var/demo/stack.log")


def run(args: list[str], env: dict[str, str], check: bool = True) -> str:
    """Run a CLI command, echo it and its output, return stdout."""
    print(f"$ {' '.join(args)}", flush=True)
    proc = subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    sys.stdout.write(proc.stdout)
    sys.stderr.write(proc.stderr)
    if check and proc.returncode != 0:
        raise SystemExit(f"command failed with exit code {proc.returncode}")
    return proc.stdout


def wait_active(env: dict[str, str], envid: str, timeout: float) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc = subprocess.run([str(ROOT / "bin/oneenv"), "--envs", "--json"], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=30)
        envs = {e["envid"]: e for e in json.loads(proc.stdout or "[]")} if proc.returncode == 0 else {}
        current = envs.get(envid)
        if current and current["policy_status"] in ("ACTIVE", "PASSIVE"):
            return current
        jobs = subprocess.run([str(ROOT / "bin/oneenv"), "--jobs", "--json"], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=30)
        for job in json.loads(jobs.stdout or "[]") if jobs.returncode == 0 else []:
            if job["envid"] == envid and job["status"] in ("FAIL", "ABORT"):
                run([str(ROOT / "bin/oneenv"), "--events", envid], env, check=False)
                raise SystemExit(f"the create job ended {job['status']}")
        time.sleep(1)
    raise SystemExit(f"environment {envid} was not ACTIVE after {timeout:.0f}s")


def start_stack(env: dict[str, str]) -> subprocess.Popen[bytes]:
    home = Path(env["CARINA_HOME"])
    forget(home / "onesim", env)  # the last demo's guest sandboxes (outside CARINA_HOME)
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    home.chmod(0o700)  # Redis' files and password: the controller's user only (see README, Security)
    log = open(home / "stack.log", "wb")  # noqa: SIM115 - lives as long as the stack
    return subprocess.Popen([str(ROOT / ".venv/bin/honcho"), "start"], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def stop_stack(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def demo(env: dict[str, str]) -> None:
    oneenv, admin = str(ROOT / "bin/oneenv"), str(ROOT / "bin/carina-admin")
    say("creating the service 'demo'")
    env["CARINA_TOKEN"] = run([admin, "service", "add", "demo", "--class", "silver"], env).strip().splitlines()[-1]
    say("uploading VM templates, context scripts and config.rb")
    examples = ROOT / "config" / "examples"
    files = sorted(str(p) for p in examples.glob("*.vm")) + sorted(str(p) for p in (ROOT / "context").glob("*.sh"))
    run([oneenv, "--upload", *files], env)
    run([oneenv, "--upload", str(examples / "config.rb")], env)
    run([oneenv, "--configs"], env)
    say("creating the tomcat environment (1 master + 2 slaves)")
    created = json.loads(run([oneenv, "--create", "tomcat"], env))
    envid = str(created["envid"])
    started = time.monotonic()
    wait_active(env, envid, timeout=100)
    say(f"environment {envid} is ACTIVE after {time.monotonic() - started:.1f}s")
    run([oneenv, "--envs"], env)
    run([oneenv, "--envvms", envid], env)
    run([oneenv, "--jobs"], env)
    run([oneenv, "--events", envid], env)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keep", action="store_true", help="leave the stack running afterwards")
    opts = parser.parse_args()
    env = demo_env()
    busy = [f"{n}={env[n]}" for n in DEFAULTS if port_busy(int(env[n]))]
    if busy:
        print(f"ports already in use: {', '.join(busy)} (set other values in the environment)", file=sys.stderr)
        return 1
    say("starting redis, onesim, gateway, worker and scheduler (honcho start; log in var/demo/stack.log)")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))    # stop the stack on SIGTERM too
    stack = start_stack(env)
    try:
        wait_health(env["CARINA_PORT"], timeout=60)
        demo(env)
        if opts.keep:
            say(f"stack running: CARINA_IP={env['CARINA_IP']} CARINA_TOKEN={env['CARINA_TOKEN']}; Ctrl-C stops it")
            stack.wait()
    except KeyboardInterrupt:
        pass
    finally:
        stop_stack(stack)
    return 0


if __name__ == "__main__":
    sys.exit(main())
