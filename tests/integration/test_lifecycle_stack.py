"""End to end: gunicorn gateway + RQ workers + Redis + the simulator with process guests + bin/oneenv.

One stack per module (starting it costs seconds); each test creates its own environments.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from functions.store import envstore, guards
from tests.stack import Stack, wait_for

pytestmark = pytest.mark.slow

SERVICE = "oneenv1"
DEADLINE = 200  # CARINA_CREATE_DEADLINE of the shared stack (longer than a crash recovery)
SHORT_DEADLINE = 12
RECOVERY = 120   # generous: a killed worker's env lock (10 s TTL) must expire before its env moves on
EXTRA_ENVS = """
  'failing' => {
    :type => "compute", :endpoint => "onesim", :description => "master fails its init",
    :master_template => "example", :master_context_script => "fail-master.sh",
    :slave_template => "example", :slave_context_script => "tomcat-slave.sh", :num_slaves => 2,
    :slavedata => "8080", :adminuser => "root", :drain_time => 0,
  },
  'silent' => {
    :type => "compute", :endpoint => "onesim", :description => "master never calls back",
    :master_template => "example", :master_context_script => "silent-master.sh",
    :slave_template => "example", :slave_context_script => "tomcat-slave.sh", :num_slaves => 1,
    :slavedata => "8080", :adminuser => "root", :drain_time => 0,
  },
"""
SILENT = b"#!/bin/sh\n# a master script that never reports anything\nexit 0\n"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, str]]:
    with Stack(Path(tmp_path_factory.mktemp("stack")), workers=2,
               env={"CARINA_CREATE_DEADLINE": str(DEADLINE)}) as st:
        token = st.add_service(SERVICE)
        st.upload_example(token, EXTRA_ENVS, files={"silent-master.sh": SILENT})
        yield st, token


def _create(st: Stack, token: str, name: str) -> tuple[str, str]:
    out = st.oneenv(token, "--create", name).stdout
    answer = json.loads(out[out.index("{"):])
    return answer["envid"], answer["jobid"]


def _job_final(st: Stack, jobid: str, timeout: float = 60) -> dict[str, str]:
    return wait_for(lambda: (j := st.job(jobid)).get("status") in ("DONE", "FAIL", "ABORT") and j,
                    timeout, f"job {jobid} to end", stack=st)


def _remove(st: Stack, token: str, envid: str) -> None:
    jobid = st.http("DELETE", f"/envs/{envid}", token)["jobid"]
    assert _job_final(st, jobid)["status"] == "DONE"
    wait_for(lambda: not st.vms_of(envid), 30, f"env {envid} VMs gone", stack=st)
    assert st.env_state(envid) is None


def test_create_scaleup_scaledown_remove(stack: tuple[Stack, str]) -> None:
    st, token = stack
    envid, jobid = _create(st, token, "tomcat")
    job = _job_final(st, jobid)
    assert job["status"] == "DONE", st.events(envid)
    env = st.env_state(envid)
    assert env is not None and env["policy_status"] == "ACTIVE"
    vms = envstore.get_vms(st.r, envid)
    assert sorted(vms) == ["m", "s0", "s1"] and st.slots_of(envid) == ["m", "s0", "s1"]
    assert env["app_url"] == f"http://{vms['m'].ip}:8080/gwt-petstore"
    assert sorted(st.ssh_show(SERVICE, envid)) == sorted(f"{vms[s].ip}:8080" for s in ("s0", "s1"))
    assert "ACTIVE" in st.oneenv(token, "--envs").stdout.upper()
    # the master's network.sh sent its guest's host key: the first SSH connection (announce s0) was checked
    assert vms["m"].hostkey.startswith("ssh-ed25519 ") and vms["m"].hostkey_pin == "callback"
    assert any(e.startswith("hostkey: master: host key pinned from callback (SHA256:") for e in st.events(envid))

    up = json.loads(st.oneenv(token, "--json", "--scaleup", envid).stdout)["jobid"]
    assert _job_final(st, up)["status"] == "DONE", st.events(envid)
    assert st.env_state(envid)["status"] == "SLAVE_SCALEUP_SUCCESS"
    vms = envstore.get_vms(st.r, envid)
    assert st.slots_of(envid) == ["m", "s0", "s1", "s2"]
    assert f"{vms['s2'].ip}:8080" in st.ssh_show(SERVICE, envid)

    down = json.loads(st.oneenv(token, "--json", "--scaledown", envid).stdout)["jobid"]
    assert _job_final(st, down)["status"] == "DONE", st.events(envid)
    wait_for(lambda: st.slots_of(envid) == ["m", "s0", "s1"], 30, "s2 terminated", stack=st)
    assert sorted(st.ssh_show(SERVICE, envid)) == sorted(f"{vms[s].ip}:8080" for s in ("s0", "s1"))
    assert "s2" not in envstore.get_vms(st.r, envid)
    _remove(st, token, envid)


def test_master_init_fail_ends_the_create_without_slaves(stack: tuple[Stack, str]) -> None:
    st, token = stack
    envid, jobid = _create(st, token, "failing")
    job = _job_final(st, jobid)
    assert job["status"] == "FAIL"
    env = st.env_state(envid)
    assert env is not None and env["status"].startswith("MASTER_INIT_FAIL"), env
    assert env["policy_status"] == "INIT"
    assert st.slots_of(envid) == ["m"]
    assert guards.current_op(st.r, envid) is None and envid not in envstore.inflight(st.r)
    _remove(st, token, envid)


def test_no_callback_before_the_deadline_fails_the_create(tmp_path: Path) -> None:
    with Stack(tmp_path, env={"CARINA_CREATE_DEADLINE": str(SHORT_DEADLINE)}) as st:
        token = st.add_service(SERVICE)
        st.upload_example(token, EXTRA_ENVS, files={"silent-master.sh": SILENT})
        _deadline_case(st, token)


def _deadline_case(st: Stack, token: str) -> None:
    envid, jobid = _create(st, token, "silent")
    job = _job_final(st, jobid, timeout=SHORT_DEADLINE + 30)
    assert job["status"] == "FAIL"
    assert st.env_state(envid)["status"] == "CREATE_TIMEOUT"
    assert "MASTER_INIT_DONE" in job["info"] and "deadline" in job["info"]
    assert st.slots_of(envid) == ["m"]
    _remove(st, token, envid)


def test_boot_failure_fails_the_create(stack: tuple[Stack, str]) -> None:
    st, token = stack
    st.sim_call("onesim.sim.setdelay", "boot", 30)
    try:
        envid, jobid = _create(st, token, "tomcat")
        master = wait_for(lambda: [v for v in st.vms_of(envid) if v.short_status() == "boot"], 20,
                          "the master VM booting", stack=st)[0]
        st.sim_call("onesim.vm.fail", master.vmid, "BOOT_FAILURE")
    finally:
        st.sim_call("onesim.sim.setdelay", "boot", st.sim_delay)
    job = _job_final(st, jobid)
    assert job["status"] == "FAIL" and "failed to boot" in job["info"]
    assert st.env_state(envid)["status"].startswith("MASTER_CREATE_FAIL")
    _remove(st, token, envid)


def test_worker_killed_mid_create_converges_to_exactly_the_desired_vms(stack: tuple[Stack, str]) -> None:
    st, token = stack
    st.sim_call("onesim.sim.setdelay", "boot", 1.5)
    try:
        envid, jobid = _create(st, token, "tomcat")
        wait_for(lambda: len(st.vms_of(envid)) >= 2, 40, "a slave being created", stack=st)
        st.kill_workers()
        st.start_worker()
        st.start_worker()
        assert _job_final(st, jobid, timeout=RECOVERY)["status"] == "DONE", st.events(envid)
    finally:
        st.sim_call("onesim.sim.setdelay", "boot", st.sim_delay)
    assert st.slots_of(envid) == ["m", "s0", "s1"]
    assert sorted(envstore.get_vms(st.r, envid)) == ["m", "s0", "s1"]

    st.sim_call("onesim.sim.setdelay", "boot", 1.5)
    try:
        up = st.http("PUT", f"/envs/{envid}/scaleup", token)["jobid"]
        wait_for(lambda: "s2" in st.slots_of(envid), 30, "the new slave VM", stack=st)
        st.kill_workers()
        st.start_worker()
        st.start_worker()
        assert _job_final(st, up, timeout=RECOVERY)["status"] == "DONE", st.events(envid)
    finally:
        st.sim_call("onesim.sim.setdelay", "boot", st.sim_delay)
    assert st.slots_of(envid) == ["m", "s0", "s1", "s2"]
    vms = envstore.get_vms(st.r, envid)
    assert f"{vms['s2'].ip}:8080" in st.ssh_show(SERVICE, envid)
    _remove(st, token, envid)


def test_two_concurrent_scaleups_one_runs_one_409(stack: tuple[Stack, str]) -> None:
    st, token = stack
    envid, jobid = _create(st, token, "tomcat")
    assert _job_final(st, jobid)["status"] == "DONE"
    barrier = threading.Barrier(2)
    answers: list[tuple[int, dict]] = []

    def scale() -> None:
        barrier.wait()
        answers.append(st.request("PUT", f"/envs/{envid}/scaleup", token))

    threads = [threading.Thread(target=scale) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    answers.sort(key=lambda a: a[0])
    assert [a[0] for a in answers] == [202, 409]
    assert "operation in progress" in json.dumps(answers[1][1])
    assert _job_final(st, answers[0][1]["jobid"])["status"] == "DONE"
    assert st.slots_of(envid) == ["m", "s0", "s1", "s2"]
    _remove(st, token, envid)


def test_forged_callbacks_are_refused(stack: tuple[Stack, str]) -> None:
    st, token = stack
    envid, jobid = _create(st, token, "tomcat")
    assert _job_final(st, jobid)["status"] == "DONE"
    vms = envstore.get_vms(st.r, envid)
    path = "/cgi-bin/updateappstatus.sh?service={}&vmid={}&envid={}&status=MASTER_INIT_FAIL&token={}"
    assert st.status("GET", path.format(SERVICE, vms["m"].vmid, envid, "forged"), "") == 403
    assert st.status("GET", path.format(SERVICE, vms["m"].vmid, envid, ""), "") == 403
    assert st.env_state(envid)["status"] != "MASTER_INIT_FAIL"
    _remove(st, token, envid)
