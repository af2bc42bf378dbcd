"""The guide's active/passive pair failing over and back on the real stack (slow): gunicorn, RQ workers,
rq-scheduler firing the minute tick, Redis, the simulator with process guests. The minutes are stepped
(Stack.run_minute moves every process's clock to the next minute), never waited for, and only once the pair's
policy jobs have ended.

The pair has the guide's expressions (recreate_expr, failover_expr, failback_expr) and roles; to keep the wall
time short it uses `period 1` (the guide: 3) and a passive window minimum of 2 VMs (the guide: 4), so the whole
story takes two or three minute ticks instead of about ten: at the first tick after two of the active's three
VMs go UNKNOWN, the active is declared FAILED (and its broken slaves recreated), the passive becomes ACTIVE and
its elasticity adds a slave; at the next tick the active, healthy again, fails back to ACTIVE, the passive
returns to PASSIVE and the slave its elasticity added is removed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from functions.store import envstore
from functions.views import shapes
from tests.stack import Stack, wait_for

pytestmark = pytest.mark.slow

SERVICE = "oneenv1"
TICKS = 4               # minute ticks: the failover and the failback take two after the fault (one spare)
FINAL = ("DONE", "FAIL", "ABORT")
HA = """
  'ha_active' => {
    :type => "compute", :endpoint => "onesim", :description => "the active side",
    :master_template => "example", :master_context_script => "tomcat-master.sh",
    :master_context_var => "BALANCE_PORT=8080",
    :slave_template => "example", :slave_context_script => "tomcat-slave.sh", :num_slaves => 2,
    :slavedata => "8080", :adminuser => "root", :drain_time => 0, :app_url => "http://%MASTER%:8080/gwt-petstore",
    :availability_policy => {
      :period => 1, :recreate_expr => "nummissing > 0 || numunknown > 0 || numfailed > 0",
      :failover_role => "active", :failover_group => "stack-ha",
      :failover_expr => "(numunknown + nummissing + numfail)/numvms > 0.50", :failback_expr => "numunknown == 0",
    },
  },
  'ha_passive' => {
    :type => "compute", :endpoint => "onesim", :description => "the passive side",
    :master_template => "example", :master_context_script => "tomcat-master.sh",
    :master_context_var => "BALANCE_PORT=8080",
    :slave_template => "example", :slave_context_script => "tomcat-slave.sh", :num_slaves => 0,
    :slavedata => "8080", :adminuser => "root", :drain_time => 0, :app_url => "http://%MASTER%:8080/gwt-petstore",
    :availability_policy => { :period => 1, :failover_role => "passive", :failover_group => "stack-ha" },
    :elasticity_policy => { :mode => 'time-based',
                            :windows => { 'all' => { :spec => 'Mon-Sun 0000-2359', :min => 2 } } },
  },
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, str]]:
    with Stack(Path(tmp_path_factory.mktemp("stack")), workers=2, clock_skew=True,
               env={"CARINA_CREATE_DEADLINE": "200", "CARINA_BOOT_GRACE": "5"}) as st:
        token = st.add_service(SERVICE)
        st.upload_example(token, HA)
        st.start_scheduler(tick_every=1)
        yield st, token


def _create(st: Stack, token: str, name: str) -> str:
    out = st.oneenv(token, "--create", name).stdout
    created = json.loads(out[out.index("{"):])
    envid, jobid = str(created["envid"]), str(created["jobid"])
    wait_for(lambda: st.job(jobid).get("status") == "DONE", 120, f"the create of {name}", stack=st)
    return envid


def _policy_jobs(st: Stack, envid: str) -> list[dict[str, Any]]:
    docs = [shapes.job_json(j) for j in envstore.list_jobs(st.r, SERVICE) if str(j.get("envid")) == envid]
    return sorted((d for d in docs if d["origin"] == "policy"), key=lambda d: int(d["jobid"]))


def _look(st: Stack, active: str, passive: str) -> tuple[str, str, int, int]:
    a, p = st.env_state(active) or {}, st.env_state(passive) or {}
    return (a.get("policy_status", "?"), p.get("policy_status", "?"), len(st.slots_of(active)),
            len(st.slots_of(passive)))


def _settle(st: Stack, active: str, passive: str, history: list[tuple[str, str, int, int]]) -> None:
    """Record each new look at the pair (every 0.2 s) until none of its policy jobs is unfinished."""
    def ended() -> bool:
        seen = _look(st, active, passive)
        if seen != history[-1]:
            history.append(seen)
        return all(j["status"] in FINAL for j in _policy_jobs(st, active) + _policy_jobs(st, passive))
    wait_for(ended, 120, "the pair's policy jobs to end", stack=st)


def _scaled_out(history: list[tuple[str, str, int, int]]) -> bool:
    """Whether the passive was seen with the slave its elasticity added while its partner was FAILED."""
    return any(h[:2] == ("FAILED", "ACTIVE") and h[3] == 2 for h in history)


def test_the_guide_pair_fails_over_and_back_on_the_real_stack(stack: tuple[Stack, str]) -> None:
    st, token = stack
    active, passive = _create(st, token, "ha_active"), _create(st, token, "ha_passive")
    assert _look(st, active, passive) == ("ACTIVE", "PASSIVE", 3, 1)
    lost = envstore.get_vms(st.r, active)
    for slot in ("s0", "s1"):                                   # the hypervisor of two of its three VMs goes down
        st.sim_call("onesim.vm.fail", lost[slot].vmid, "UNKNOWN")

    history = [_look(st, active, passive)]
    for _ in range(TICKS):
        st.run_minute()
        _settle(st, active, passive, history)
        if _scaled_out(history) and history[-1] == ("ACTIVE", "PASSIVE", 3, 1):
            break
    logs = {e: st.events(e) for e in (active, passive)}
    assert history[-1] == ("ACTIVE", "PASSIVE", 3, 1), (history, logs)
    assert _scaled_out(history), (history, logs)                # failed over; the passive scaled out

    a_jobs, p_jobs = _policy_jobs(st, active), _policy_jobs(st, passive)
    assert [(j["type"], j["slots"], j["status"]) for j in a_jobs] == [("RECREATE", ["s0", "s1"], "DONE")], a_jobs
    assert [(j["type"], j["source"], j["status"]) for j in p_jobs] == [
        ("SCALEUP", "elasticity", "DONE"), ("SCALEDOWN", "failback", "DONE")], p_jobs
    assert p_jobs[1]["slots"] == ["s0"]                         # the slave the scale-up added
    assert any("AVAIL_POLICY_STATUS: Declaring environment as FAILED and triggering failover to environment "
               f"{passive}" in e for e in logs[active])
    assert any(f"AVAIL_POLICY_STATUS: Failing back environment to ACTIVE status; environment {passive} returns "
               "to PASSIVE" in e for e in logs[active])
    assert any(f"Making environment ACTIVE due to failover of primary environment {active}" in e
               for e in logs[passive])
    assert any(f"Making environment PASSIVE after failing back to primary environment {active}" in e
               for e in logs[passive])

    assert not [e for e in logs[active] if "refused to terminate" in e]      # UNKNOWN VMs terminated once
    now = envstore.get_vms(st.r, active)                        # the active runs on its recreated slaves
    assert sorted(now) == ["m", "s0", "s1"] and now["m"].vmid == lost["m"].vmid
    assert {now[s].vmid for s in ("s0", "s1")}.isdisjoint({lost[s].vmid for s in ("s0", "s1")})
    assert sorted(st.ssh_show(SERVICE, active)) == sorted(f"{now[s].ip}:8080" for s in ("s0", "s1"))
    assert st.slots_of(passive) == ["m"] and sorted(envstore.get_vms(st.r, passive)) == ["m"]
    assert st.ssh_show(SERVICE, passive) == []                  # the passive's master forgot the removed slave
