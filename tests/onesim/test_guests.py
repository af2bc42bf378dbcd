"""Simulator guests: real context scripts fetched over real HTTP, real callbacks, real SSH through paramiko."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import paramiko
import pytest

from functions.cloud.sshexec import HostKeyMismatch, run_remote, script_command
from onesim.guestlib import GuestError, callback_urls, file_name, is_master
from onesim.guests import GuestManager
from onesim.sshd import generate_host_key, key_in_authorized_keys, load_host_key, public_line
from tests.harness import free_port, guest_root

CONTEXT_DIR = Path(__file__).resolve().parents[2] / "context"
TOKEN = "tok+en/with=odd&chars"


class Repo:
    """A local HTTP server playing the Carina gateway: serves context files, records callbacks."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.calls: list[tuple[str, dict[str, list[str]]]] = []
        self.raw: list[str] = []
        repo = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                parts = urlsplit(self.path)
                if parts.path.startswith("/cgi-bin/"):
                    repo.raw.append(self.path)
                    repo.calls.append((parts.path, parse_qs(parts.query, keep_blank_values=True)))
                    body = b"ok\n"
                elif parts.path.startswith("/repo/svc/context/") and parts.path.rsplit("/", 1)[-1] in repo.files:
                    body = repo.files[parts.path.rsplit("/", 1)[-1]]
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.addr = f"127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def url(self, name: str) -> str:
        return f"http://{self.addr}/repo/svc/context/{name}"

    def statuses(self) -> list[str]:
        return [q["status"][0] for p, q in self.calls if p.endswith("updateappstatus.sh")]


def wait_for(pred: Callable[[], object], timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def sandboxes() -> Iterator[Path]:
    """The guests' sandbox root (outside pytest's 0700 temporary directories, which the guest user cannot reach)."""
    root = guest_root()
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def controller_key() -> paramiko.PKey:
    return load_host_key(generate_host_key())


@pytest.fixture
def repo(controller_key: paramiko.PKey) -> Iterator[Repo]:
    files = {p.name: p.read_bytes() for p in CONTEXT_DIR.glob("*.sh")}
    files["authorized_keys"] = f"{public_line(controller_key)} carina@svc\n".encode()
    files["sleeper.sh"] = (b'echo $$ > "$HOME/init.pid"\nsleep 300 &\necho $! > "$HOME/child.pid"\nwait\n')
    server = Repo(files)
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


def vm_context(repo: Repo, vmid: int, ip: str, script: str, **extra: str) -> dict[str, str]:
    names = ["authorized_keys", "init.sh", "carina-lib.sh", "network.sh", script]
    ctx = {"FILES": " ".join(repo.url(n) for n in names), "VMID": str(vmid), "ENVID": "3",
           "SERVICE_NAME": "svc", "CARINA_IP": repo.addr, "IP": ip, "HOSTNAME": f"env-{vmid}",
           "DEFUSER": "local", "APP_CONTEXT_SCRIPT": script, "CARINA_TOKEN": TOKEN}
    ctx.update(extra)
    return ctx


def ssh(ip: str, port: int, key: paramiko.PKey, user: str = "local") -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    client.connect(ip, port, username=user, pkey=key, look_for_keys=False, allow_agent=False, timeout=10,
                   banner_timeout=10, auth_timeout=10)
    return client


def run(client: paramiko.SSHClient, command: str) -> tuple[int, str, str]:
    _, out, err = client.exec_command(command, timeout=20)
    rc = out.channel.recv_exit_status()
    return rc, out.read().decode(), err.read().decode()


def params(query: dict[str, list[str]]) -> dict[str, str]:
    assert all(len(v) == 1 for v in query.values()), query
    return {k: v[0] for k, v in query.items()}


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # the process may exit between the two checks: reading /proc then fails with ESRCH/ENOENT
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


def test_process_guest_calls_back_and_runs_ssh_commands(tmp_path: Path, sandboxes: Path, repo: Repo,
                                                        controller_key: paramiko.PKey) -> None:
    port, ip = free_port(), "127.0.1.11"
    mgr = GuestManager("process", port, tmp_path, sandboxes)
    try:
        mgr.start(7, ip, vm_context(repo, 7, ip, "tomcat-master.sh", CARINA_ROLE="master", BALANCE_PORT="8080"))
        wait_for(lambda: len(repo.calls) >= 2, what="two callbacks")
        (p1, q1), (p2, q2) = repo.calls
        assert p1 == "/cgi-bin/updatevmstatus.sh"
        assert params(q1) == {"service": "svc", "vmid": "7", "envid": "3", "newip": ip, "name": "env-7",
                              "hostkey": mgr.host_key(7), "token": TOKEN}      # the guest's own key, read by sh
        assert p2 == "/cgi-bin/updateappstatus.sh"
        assert params(q2) == {"service": "svc", "vmid": "7", "envid": "3", "status": "MASTER_INIT_DONE",
                              "token": TOKEN}
        home = sandboxes / "vm-7" / "home" / "local"
        keys = home / ".ssh" / "authorized_keys"
        assert stat.S_IMODE(keys.stat().st_mode) == 0o600
        assert (sandboxes / "vm-7" / "mnt" / "init.sh").is_file()

        client = ssh(ip, port, controller_key)
        try:
            served = client.get_transport().get_remote_server_key()
            assert public_line(served) == mgr.host_key(7)
            assert run(client, "~/tomcat-master.sh add 127.0.0.9 8080") == (0, "added 127.0.0.9:8080\n", "")
            assert run(client, "~/tomcat-master.sh add 127.0.0.9 8080")[0] == 0
            assert run(client, "~/tomcat-master.sh add 127.0.0.10 8080")[0] == 0
            assert run(client, "~/tomcat-master.sh show") == (0, "127.0.0.9:8080\n127.0.0.10:8080\n", "")
            assert run(client, "./tomcat-master.sh remove 127.0.0.9 8080")[0] == 0
            assert run(client, "sh tomcat-master.sh delete 127.0.0.10 8080")[0] == 0
            assert run(client, "~/tomcat-master.sh show") == (0, "", "")
            rc, out, err = run(client, "~/tomcat-master.sh frobnicate")
            assert rc == 2 and out == "" and "usage:" in err
            rc, out, err = run(client, "~/tomcat-master.sh add '127.0.0.9;rm' 80")
            assert rc == 2 and "bad backend address" in err
            rc, out, err = run(client, 'echo "$HOME|$(pwd)|$VMID|$BALANCE_PORT|$MNT"; echo oops >&2; exit 3')
            assert (rc, err) == (3, "oops\n")
            assert out == f"{home}|{home}|7|8080|{sandboxes / 'vm-7' / 'mnt'}\n"
        finally:
            client.close()
        log = (sandboxes / "vm-7" / "guest.log").read_text()
        assert "init.sh: installed authorized_keys" in log and "init.sh exited with status 0" in log
        assert "ssh exec '~/tomcat-master.sh frobnicate': exit status 2" in log
    finally:
        mgr.close()


def test_process_guest_refuses_wrong_key_and_wrong_user(tmp_path: Path, sandboxes: Path, repo: Repo,
                                                        controller_key: paramiko.PKey) -> None:
    port, ip = free_port(), "127.0.1.12"
    mgr = GuestManager("process", port, tmp_path, sandboxes)
    try:
        mgr.start(8, ip, vm_context(repo, 8, ip, "tomcat-master.sh"))
        wait_for(lambda: len(repo.calls) >= 2, what="callbacks")
        with pytest.raises(paramiko.AuthenticationException):
            ssh(ip, port, load_host_key(generate_host_key()))
        with pytest.raises(paramiko.AuthenticationException):
            ssh(ip, port, controller_key, user="root")
        ssh(ip, port, controller_key).close()
    finally:
        mgr.close()


def test_stop_kills_processes_closes_port_keeps_sandbox(tmp_path: Path, sandboxes: Path, repo: Repo,
                                                        controller_key: paramiko.PKey) -> None:
    port, ip = free_port(), "127.0.1.13"
    mgr = GuestManager("process", port, tmp_path, sandboxes)
    try:
        ctx = vm_context(repo, 9, ip, "tomcat-master.sh", INIT_SCRIPTS="init.sh sleeper.sh")
        ctx["FILES"] += " " + repo.url("sleeper.sh")
        mgr.start(9, ip, ctx)
        home = sandboxes / "vm-9" / "home" / "local"
        wait_for(lambda: (home / "child.pid").is_file() and (home / "child.pid").read_text().strip(),
                 what="sleeper pids")
        pids = [int((home / n).read_text()) for n in ("init.pid", "child.pid")]
        assert all(pid_alive(p) for p in pids)
        key_before = mgr.host_key(9)
        ssh(ip, port, controller_key).close()

        mgr.stop(9)
        mgr.stop(9)  # twice is fine
        wait_for(lambda: not any(pid_alive(p) for p in pids), timeout=5, what="processes to die")
        with pytest.raises(OSError), socket.create_connection((ip, port), timeout=2):
            pass
        assert (sandboxes / "vm-9" / "guest.log").is_file()
        assert mgr.host_key(9) is None

        repo.calls.clear()
        mgr.start(9, ip, vm_context(repo, 9, ip, "tomcat-master.sh"))  # the VM is resumed: same host key
        wait_for(lambda: len(repo.calls) >= 2, what="callbacks after restart")
        assert mgr.host_key(9) == key_before
    finally:
        mgr.close()


def test_bad_files_urls_do_not_crash_the_guest(tmp_path: Path, sandboxes: Path, repo: Repo) -> None:
    port, ip = free_port(), "127.0.1.14"
    mgr = GuestManager("process", port, tmp_path, sandboxes)
    try:
        ctx = vm_context(repo, 10, ip, "tomcat-slave.sh", CARINA_ROLE="slave", SLAVE_ID="4")
        bad = ["file:///etc/passwd", f"http://127.0.0.1:{free_port()}/nothing.sh", repo.url("missing.sh"),
               f"http://{repo.addr}/repo/svc/context/", f"http://{repo.addr}/repo/svc/context/..", "not a url"]
        ctx["FILES"] = " ".join(bad) + " " + ctx["FILES"]
        mgr.start(10, ip, ctx)
        wait_for(lambda: len(repo.calls) >= 2, what="callbacks")
        assert repo.statuses() == ["SLAVE_4_INIT_DONE"]
        mnt = sandboxes / "vm-10" / "mnt"
        assert sorted(p.name for p in mnt.iterdir()) == ["authorized_keys", "carina-lib.sh", "init.sh",
                                                          "network.sh", "tomcat-slave.sh"]
        log = (sandboxes / "vm-10" / "guest.log").read_text()
        assert "file:///etc/passwd" in log and "missing.sh" in log and "404" in log
    finally:
        mgr.close()


def test_bad_defuser_is_logged_not_raised(tmp_path: Path, sandboxes: Path, repo: Repo) -> None:
    mgr = GuestManager("process", free_port(), tmp_path, sandboxes)
    try:
        mgr.start(11, "127.0.1.15", vm_context(repo, 11, "127.0.1.15", "tomcat-slave.sh", DEFUSER="../evil"))
        log = sandboxes / "vm-11" / "guest.log"
        wait_for(lambda: log.is_file() and "DEFUSER" in log.read_text(), what="log line")
        assert not (sandboxes / "vm-11" / "home").exists()
        assert repo.calls == []
    finally:
        mgr.close()


def test_synthetic_guests_call_back_and_answer_ssh(tmp_path: Path, repo: Repo,
                                                   controller_key: paramiko.PKey) -> None:
    port = free_port()
    mgr = GuestManager("synthetic", port, tmp_path)
    try:
        mgr.start(20, "127.0.1.20", vm_context(repo, 20, "127.0.1.20", "tomcat-master.sh", CARINA_ROLE="master"))
        mgr.start(21, "127.0.1.21", vm_context(repo, 21, "127.0.1.21", "tomcat-slave.sh", CARINA_ROLE="slave",
                                               SLAVE_ID="0"))
        wait_for(lambda: len(repo.calls) == 4 and mgr.host_key(21), what="four callbacks")
        by_vm: dict[str, list[dict[str, str]]] = {}
        for path, q in repo.calls:
            by_vm.setdefault(q["vmid"][0], []).append({"path": path, **params(q)})
        assert by_vm["21"] == [
            {"path": "/cgi-bin/updatevmstatus.sh", "service": "svc", "vmid": "21", "envid": "3",
             "newip": "127.0.1.21", "name": "env-21", "hostkey": mgr.host_key(21), "token": TOKEN},
            {"path": "/cgi-bin/updateappstatus.sh", "service": "svc", "vmid": "21", "envid": "3",
             "status": "SLAVE_0_INIT_DONE", "token": TOKEN}]
        assert by_vm["20"][1]["status"] == "MASTER_INIT_DONE"
        assert "token=tok%2Ben%2Fwith%3Dodd%26chars" in repo.raw[-1]

        client = ssh("127.0.1.20", port, controller_key)
        try:
            assert public_line(client.get_transport().get_remote_server_key()) == mgr.host_key(20)
            assert run(client, "~/tomcat-master.sh add 127.0.1.21 8080") == (0, "", "")
        finally:
            client.close()
        log = (tmp_path / "synthetic-ssh.log").read_text()
        assert 'vmid=20 ip=127.0.1.20 user=local command="~/tomcat-master.sh add 127.0.1.21 8080"' in log
        with pytest.raises(paramiko.AuthenticationException):
            ssh("127.0.1.21", port, load_host_key(generate_host_key()))
        assert list(tmp_path.glob("vm-*")) == []

        key20 = mgr.host_key(20)
        mgr.stop(20)
        with pytest.raises(OSError), socket.create_connection(("127.0.1.20", port), timeout=2):
            pass
        assert mgr.host_key(20) is None
        mgr.start(20, "127.0.1.20", vm_context(repo, 20, "127.0.1.20", "tomcat-master.sh", CARINA_ROLE="master"))
        wait_for(lambda: mgr.host_key(20), what="synthetic guest restart")
        assert mgr.host_key(20) == key20 != mgr.host_key(21)
    finally:
        mgr.close()


def test_mode_none_and_bad_arguments(tmp_path: Path) -> None:
    mgr = GuestManager("none", free_port(), tmp_path / "w")
    mgr.start(1, "127.0.1.30", {"FILES": "http://127.0.0.1:1/init.sh"})
    mgr.stop(1)
    assert mgr.host_key(1) is None
    mgr.close()
    assert not (tmp_path / "w").exists()
    with pytest.raises(ValueError, match="mode"):
        GuestManager("vm", 22, tmp_path)
    with pytest.raises(ValueError, match="ssh_port"):
        GuestManager("process", 70000, tmp_path)


def test_pure_helpers(controller_key: paramiko.PKey) -> None:
    assert file_name("http://h/repo/s/context/init.sh") == "init.sh"
    assert file_name("http://h/repo/s/context/") is None
    with pytest.raises(GuestError, match="FILES"):
        file_name("http://h/repo/..")
    assert is_master({"CARINA_ROLE": "master", "SLAVE_ID": "1"})
    assert not is_master({"CARINA_ROLE": "slave"})
    assert is_master({}) and not is_master({"SLAVE_ID": ""})
    ctx = {"CARINA_IP": "10.0.0.1:80", "SERVICE_NAME": "a b", "ENVID": "5", "SLAVE_ID": ""}
    urls = callback_urls(ctx, 4, "1.2.3.4")
    assert urls == ["http://10.0.0.1:80/cgi-bin/updatevmstatus.sh?service=a%20b&vmid=4&envid=5&newip=1.2.3.4"
                    "&name=&token=",
                    "http://10.0.0.1:80/cgi-bin/updateappstatus.sh?service=a%20b&vmid=4&envid=5"
                    "&status=SLAVE__INIT_DONE&token="]
    with pytest.raises(GuestError, match="CARINA_IP"):
        callback_urls({}, 1, "1.2.3.4")
    assert callback_urls(ctx, 4, "1.2.3.4", "ssh-ed25519 AB+/")[0].endswith(
        "&name=&hostkey=ssh-ed25519%20AB%2B%2F&token=")
    line = public_line(controller_key)
    assert key_in_authorized_keys(f"# comment\n\nfrom=\"127.0.0.1\" {line} me@host\n", controller_key)
    assert not key_in_authorized_keys(public_line(load_host_key(generate_host_key())), controller_key)


# --- the context scripts on their own, with /bin/sh and environment variables --------------------------------

def sh(script: str, *args: str, home: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full = {"PATH": "/usr/bin:/bin", "HOME": str(home), **env}
    return subprocess.run(["/bin/sh", str(CONTEXT_DIR / script), *args], env=full, capture_output=True,
                          text=True, timeout=30)


@pytest.mark.parametrize(("env", "rc", "out"), [
    ({"MOUNTLIST": "\\/vol\\/data{1-6},"}, 0, "/vol/data1\n"),
    ({"MOUNTLIST": "/vol/data{1-6}", "SLAVE_ID": "0"}, 0, "/vol/data2\n"),
    ({"MOUNTLIST": "/vol/data{1-6}", "SLAVE_ID": "4", "NUM_SLAVES": "5"}, 0, "/vol/data6\n"),
    ({"MOUNTLIST": "/vol/data{1-6}", "SLAVE_ID": "5"}, 3, ""),
    ({"MOUNTLIST": "/vol/data{3-9}", "SLAVE_ID": "1", "CARINA_ROLE": "master"}, 0, "/vol/data3\n"),
    ({"MOUNTLIST": "/vol/data{2-9}", "SLAVE_ID": "1", "CARINA_ROLE": "slave"}, 0, "/vol/data4\n"),
    ({"MOUNTLIST": "/vol/data{x-9}"}, 2, ""),
    ({"MOUNTLIST": "/vol/data{1-6}", "SLAVE_ID": ""}, 2, ""),
    ({"SLAVE_ID": "1"}, 1, ""),
])
def test_cassandra_getmount(tmp_path: Path, env: dict[str, str], rc: int, out: str) -> None:
    result = sh("cassandra.sh", "getmount", home=tmp_path, **env)
    assert (result.returncode, result.stdout) == (rc, out), result.stderr


def script_env(repo: Repo, **extra: str) -> dict[str, str]:
    return {"CARINA_IP": repo.addr, "SERVICE_NAME": "svc", "VMID": "5", "ENVID": "2", "CARINA_TOKEN": TOKEN,
            **extra}


@pytest.mark.parametrize(("script", "extra", "rc", "status"), [
    ("cassandra.sh", {}, 1, "MASTER_INIT_FAIL:MOUNTLIST_MISSING"),
    ("cassandra.sh", {"SLAVE_ID": "2"}, 1, "SLAVE_2_INIT_FAIL"),
    ("cassandra.sh", {"SLAVE_ID": "2", "MOUNTLIST": "/d{1-6}"}, 0, "SLAVE_2_INIT_DONE"),
    ("fail-master.sh", {}, 1, "MASTER_INIT_FAIL:DEMO_FAILURE"),
    ("tomcat-slave.sh", {"SLAVE_ID": ""}, 0, "SLAVE__INIT_DONE"),
])
def test_context_scripts_report_status(tmp_path: Path, repo: Repo, script: str, extra: dict[str, str],
                                       rc: int, status: str) -> None:
    result = sh(script, "init", home=tmp_path, **script_env(repo, **extra))
    assert result.returncode == rc, result.stderr
    assert len(repo.calls) == 1
    path, query = repo.calls[0]
    assert path == "/cgi-bin/updateappstatus.sh"
    assert params(query) == {"service": "svc", "vmid": "5", "envid": "2", "status": status, "token": TOKEN}
    if status == "SLAVE_2_INIT_DONE":
        assert (tmp_path / "mount").read_text() == "/d4\n"


def test_init_reports_missing_app_script(tmp_path: Path, repo: Repo) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    for name in ("network.sh", "carina-lib.sh"):
        (mnt / name).write_bytes((CONTEXT_DIR / name).read_bytes())
    result = sh("init.sh", home=tmp_path / "home", MNT=str(mnt), IP="127.0.1.40", HOSTNAME="h-m",
                APP_CONTEXT_SCRIPT="gone.sh", **script_env(repo))
    assert result.returncode == 1
    assert "no " in result.stderr and "authorized_keys" in result.stderr
    assert [p for p, _ in repo.calls] == ["/cgi-bin/updatevmstatus.sh", "/cgi-bin/updateappstatus.sh"]
    assert params(repo.calls[0][1])["newip"] == "127.0.1.40"
    assert repo.statuses() == ["MASTER_INIT_FAIL:CONTEXT_SCRIPT_MISSING"]


def test_network_sh_reports_the_host_key_when_there_is_one(tmp_path: Path, repo: Repo) -> None:
    """carina-lib.sh reads the key file ($ONESIM_HOSTKEY_PUB, else /etc/ssh/ssh_host_ed25519_key.pub) and sends
    its `<type> <base64>` (comment dropped); without a readable file the callback carries no key."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    for name in ("network.sh", "carina-lib.sh"):
        (mnt / name).write_bytes((CONTEXT_DIR / name).read_bytes())
    key = public_line(load_host_key(generate_host_key()))
    (tmp_path / "host.pub").write_text(f"{key} root@vm\n")
    for pub, expected in ((tmp_path / "host.pub", key), (tmp_path / "missing.pub", None)):
        repo.calls.clear()
        result = subprocess.run(["/bin/sh", str(mnt / "network.sh")], capture_output=True, text=True, timeout=30,
                                env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "IP": "127.0.1.42",
                                     "HOSTNAME": "h", "ONESIM_HOSTKEY_PUB": str(pub), **script_env(repo)})
        assert result.returncode == 0, result.stderr
        assert params(repo.calls[0][1]).get("hostkey") == expected


def test_carina_ssh_client_works_against_a_process_guest(tmp_path: Path, sandboxes: Path, repo: Repo) -> None:
    pem = generate_host_key()
    repo.files["authorized_keys"] = f"{public_line(load_host_key(pem))} carina@svc\n".encode()
    port, ip = free_port(), "127.0.1.16"
    mgr = GuestManager("process", port, tmp_path, sandboxes)
    try:
        mgr.start(12, ip, vm_context(repo, 12, ip, "tomcat-master.sh"))
        wait_for(lambda: repo.statuses() == ["MASTER_INIT_DONE"], what="master init")
        pinned = mgr.host_key(12)
        add = script_command("tomcat-master.sh", ["add", "127.0.1.17", "8080"])
        result, seen = run_remote(ip, port, "local", pem, add, known_key=pinned, timeout=10)
        assert (result.rc, seen) == (0, pinned)
        result, _ = run_remote(ip, port, "local", pem, script_command("tomcat-master.sh", ["show"]),
                               known_key=pinned, timeout=10)
        assert (result.rc, result.out) == (0, "127.0.1.17:8080\n")
        other = public_line(load_host_key(generate_host_key()))
        with pytest.raises(HostKeyMismatch):
            run_remote(ip, port, "local", pem, add, known_key=other, timeout=10)
    finally:
        mgr.close()


@pytest.mark.parametrize(("extra", "status"), [
    ({"CARINA_ROLE": "master"}, "MASTER_INIT_DONE"),
    ({"CARINA_ROLE": "slave", "SLAVE_ID": "1"}, "SLAVE_1_INIT_DONE"),
])
def test_init_without_app_script_reports_done(tmp_path: Path, repo: Repo, extra: dict[str, str],
                                              status: str) -> None:
    """The guide's minimal example has empty context scripts: the VM is ready once its network is."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    for name in ("network.sh", "carina-lib.sh"):
        (mnt / name).write_bytes((CONTEXT_DIR / name).read_bytes())
    result = sh("init.sh", home=tmp_path / "home", MNT=str(mnt), IP="127.0.1.41", HOSTNAME="h",
                APP_CONTEXT_SCRIPT="", **script_env(repo, **extra))
    assert result.returncode == 0, result.stderr
    assert repo.statuses() == [status]
