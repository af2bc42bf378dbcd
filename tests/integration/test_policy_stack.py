"""Policies on the real stack (slow): gunicorn, RQ workers, rq-scheduler firing the minute tick, Redis, the
simulator with process guests. A time window raising the minimum grows a 1+1 environment to 1+2 by a policy
SCALEUP, then a slave deleted behind Carina's back is replaced in its slot by a policy RECREATE and announced to
the master (the guide's examples behave as the guide says). The minutes are stepped (Stack.run_minute moves every
process's clock to the next minute), never waited for, and only while no job runs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from functions.store import envstore
from tests.stack import Stack, wait_for

pytestmark = pytest.mark.slow

SERVICE = "oneenv1"
MINUTES = 3     # minute ticks: a policy acts at the first one after it sees the cause (the refresh sees it first)
ELASTIC = """
  'elastic' => {
    :type => "compute", :endpoint => "onesim", :description => "window-sized, self-healing",
    :master_template => "example", :master_context_script => "tomcat-master.sh",
    :master_context_var => "BALANCE_PORT=8080",
    :slave_template => "example", :slave_context_script => "tomcat-slave.sh", :num_slaves => 1,
    :slavedata => "8080", :adminuser => "root", :drain_time => 0, :app_url => "http://%MASTER%:8080/gwt-petstore",
    :elasticity_policy => { :mode => 'time-based', :min => 3,
                            :windows => { 'always' => { :spec => 'Mon-Sun 0000-2359', :min => 3 } } },
    :availability_policy => { :period => 1, :recreate_expr => "nummissing > 0 || numunknown > 0 || numfailed > 0" },
  },
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, str]]:
    with Stack(Path(tmp_path_factory.mktemp("stack")), workers=2, clock_skew=True,
               env={"CARINA_CREATE_DEADLINE": "200", "CARINA_BOOT_GRACE": "5"}) as st:
        token = st.add_service(SERVICE)
        st.upload_example(token, ELASTIC)
        st.start_scheduler(tick_every=1)
        yield st, token


def _policy_job(st: Stack, token: str, envid: str, kind: str) -> dict | None:
    """The newest policy job of `kind` of the environment (any status), as GET /jobs shows it."""
    jobs = st.http("GET", "/jobs", token)
    found = [j for j in jobs if j.get("envid") == envid and j.get("type") == kind and j.get("origin") == "policy"]
    return found[-1] if found else None


def _policy_acts(st: Stack, token: str, envid: str, kind: str) -> dict:
    """Step minute ticks (at most MINUTES) until the policy starts a job of `kind`, then wait for it to end DONE."""
    for _ in range(MINUTES):
        st.run_minute()
        if _policy_job(st, token, envid, kind):
            break
    wait_for(lambda: (_policy_job(st, token, envid, kind) or {}).get("status") in ("DONE", "FAIL", "ABORT"), 90,
             f"the policy {kind}", stack=st)
    job = _policy_job(st, token, envid, kind)
    assert job is not None and job["status"] == "DONE", job
    return job


def test_a_window_scales_up_and_a_lost_slave_is_recreated_in_its_slot(stack: tuple[Stack, str]) -> None:
    st, token = stack
    out = st.oneenv(token, "--create", "elastic").stdout
    created = json.loads(out[out.index("{"):])
    envid, jobid = str(created["envid"]), str(created["jobid"])
    wait_for(lambda: st.job(jobid).get("status") == "DONE", 120, "the create", stack=st)
    assert st.slots_of(envid) == ["m", "s0"]

    _policy_acts(st, token, envid, "SCALEUP")                              # the window's minimum
    wait_for(lambda: st.slots_of(envid) == ["m", "s0", "s1"], 60, "three VMs", stack=st)
    assert any("by a policy" in e for e in st.events(envid))

    old = envstore.get_vms(st.r, envid)["s0"]
    st.sim_call("onesim.vm.fail", old.vmid, "vanish")                       # deleted behind Carina's back
    _policy_acts(st, token, envid, "RECREATE")
    new = envstore.get_vms(st.r, envid)["s0"]
    assert new.vmid != old.vmid and new.state == "announced"
    assert st.slots_of(envid) == ["m", "s0", "s1"]
    backends = st.ssh_show(SERVICE, envid)
    assert f"{new.ip}:8080" in backends and len(backends) == 2
    env = json.loads(st.oneenv(token, "--envs", "--json").stdout)
    doc = next(e for e in env if str(e["envid"]) == envid)
    assert doc["policy_status"] == "ACTIVE" and doc["metrics"].startswith("avgcpu[")
