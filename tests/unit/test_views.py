"""JSON shapes and CLI table rows of environments, VMs, jobs and events (pure)."""

from __future__ import annotations

import ast
from pathlib import Path

from functions.views import shapes as views
from functions.views.tables import render_table

ENV = {"envid": "12", "service": "svc", "name": "tomcat", "status": "MASTER_INIT_FAIL:MOUNTLIST_MISSING_X",
       "policy_status": "INIT", "app_url": "", "groupid": "-1", "metrics": "", "info": "", "spec": {}}


def test_env_json_has_exactly_the_original_keys() -> None:
    doc = views.env_json(ENV, 3)
    assert list(doc) == ["envid", "name", "status", "policy_status", "url", "numVMs", "metrics", "gsTokens",
                         "gsOutStandingReqs", "info", "groupid", "policy_source"]
    assert doc["policy_source"] is None
    assert views.env_json(dict(ENV, policy_source="snapshot"), 1)["policy_source"] == "snapshot"
    assert doc["url"] is None and doc["numVMs"] == 3 and doc["gsTokens"] == [] and doc["gsOutStandingReqs"] == 0
    assert doc["groupid"] == "-1" and doc["envid"] == "12"


def test_env_row_lowercases_and_cuts_d_status_and_dashes_empty_url() -> None:
    row = views.env_row(views.env_json(ENV, 1))
    assert row == ["12", "tomcat", 1, "init", "master_init_fail:moun", "-"]
    assert len(row[4]) == 21
    full = dict(ENV, app_url="http://10.0.0.5:8080/", status="ACTIVE", policy_status="ACTIVE")
    assert views.env_row(views.env_json(full, 3))[3:] == ["active", "active", "http://10.0.0.5:8080/"]


def test_count_vms_ignores_gone_slots() -> None:
    assert views.count_vms([{"state": "running"}, {"state": "allocating"}, {"state": "gone"}]) == 2


def test_vm_json_and_row() -> None:
    rec = {"slot": "s0", "role": "slave", "index": 0, "endpoint": "onesim", "vmid": 7, "state": "running",
           "status": "SLAVE_0_INIT_DONE", "ip": "10.0.0.7", "hostname": "tomcat-s", "cpu": 12.0, "one_state": "runn"}
    doc = views.vm_json("3", rec)
    assert doc == {"vmid": 7, "envid": "3", "endpoint": "onesim", "hostname": "tomcat-s", "ipaddress": "10.0.0.7",
                   "status": "SLAVE_0_INIT_DONE", "cpu": 12, "slot": "s0", "role": "slave"}
    assert views.vm_row(doc) == [7, "3", "tomcat-s", "10.0.0.7", "slave_0_init_done", 12]


def test_vm_observed_state_overrides_reported_status() -> None:
    base = {"slot": "m", "role": "master", "vmid": 1, "status": "MASTER_INIT_DONE", "cpu": -1}
    assert views.vm_status(dict(base, one_state="unkn")) == "UNKNOWN"
    assert views.vm_status(dict(base, one_state="fail")) == "FAILED"
    assert views.vm_status(dict(base, one_state="missing")) == "MISSING"
    assert views.vm_status(dict(base, one_state="runn")) == "MASTER_INIT_DONE"
    assert views.vm_status(dict(base, one_state="")) == "MASTER_INIT_DONE"


def test_vm_row_blanks_and_cpu_formats() -> None:
    doc = views.vm_json("3", {"slot": "m", "role": "master", "vmid": None, "status": "VM_CREATE", "cpu": 33.333})
    assert views.vm_row(doc) == [None, "3", "-", "-", "vm_create", 33.3]
    assert views.vm_json("3", {"cpu": "junk"})["cpu"] == -1


def test_a_cpu_of_nan_or_inf_from_opennebula_lists_as_unknown_not_a_crash() -> None:
    for value in (float("nan"), float("inf"), float("-inf"), "NaN", "inf"):
        doc = views.vm_json("3", {"cpu": value})
        assert doc["cpu"] == -1 and views.vm_row(doc)[-1] == -1


def test_ruby_time_matches_the_original_format() -> None:
    # 2012-09-17 14:41:29 UTC was a Monday
    assert views.ruby_time(1347892889) == "Mon Sep 17 14:41:29 +0000 2012"
    assert views.ruby_time("1347892889.75") == "Mon Sep 17 14:41:29 +0000 2012"
    assert views.ruby_time(1330560000) == "Thu Mar 01 00:00:00 +0000 2012"
    assert views.ruby_time("") is None and views.ruby_time(None) is None and views.ruby_time("x") is None


def test_job_json_keys_and_row() -> None:
    job = {"jobid": "5", "service": "svc", "envid": "3", "name": "tomcat", "type": "CREATE", "status": "RUNNING",
           "submit": "1347892889.0", "start": "1347892889.0", "end": "", "info": ""}
    doc = views.job_json(job)
    assert list(doc)[:14] == ["jobid", "name", "pid", "envid", "type", "predjob", "group", "groupid", "submit",
                              "start", "end", "dependstr", "status", "priority"]
    assert doc["pid"] is None and doc["group"] is None and doc["end"] is None and doc["priority"] == 0
    assert doc["submit"] == "Mon Sep 17 14:41:29 +0000 2012"
    assert doc["origin"] == "user" and "source" not in doc and "slots" not in doc
    policy = views.job_json(dict(job, type="RECREATE", origin="policy", source="availability", slots="s0,s2"))
    assert (policy["origin"], policy["source"], policy["slots"]) == ("policy", "availability", ["s0", "s2"])
    assert views.job_row(doc) == ["5", "3", "tomcat", "CREATE", "Mon Sep 17 14:41:29 +0000 2012", "RUNNING"]


def test_event_json_keeps_extras_and_row() -> None:
    ev = {"id": "1-0", "ts": "1347892889.5", "envid": "3", "type": "callback", "msg": "VM 7 (m) status=X",
          "vmid": "7", "status": "X"}
    doc = views.event_json(ev)
    assert doc["time"] == "2012-09-17T14:41:29Z" and doc["ts"] == 1347892889.5
    assert doc["vmid"] == "7" and doc["status"] == "X" and "envid" not in doc
    assert views.event_row(doc) == ["2012-09-17T14:41:29Z", "callback", "VM 7 (m) status=X"]


def test_tables_align_with_the_original_layout() -> None:
    docs = [views.env_json(dict(ENV, envid="9", status="ACTIVE"), 3),
            views.env_json(dict(ENV, envid="10", name="cassandra", app_url="http://x/"), 1)]
    text = render_table(views.ENV_HEADERS, [views.env_row(d) for d in docs])
    assert text == ("ID      NAME VMS P_STATUS              D_STATUS APP_URL\n"
                    "--      ---- --- --------              -------- -------\n"
                    " 9    tomcat   3     init                active -\n"
                    "10 cassandra   1     init master_init_fail:moun http://x/\n")


def test_views_is_pure() -> None:
    tree = ast.parse(Path(views.__file__).read_text())
    names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not names & {"redis", "rq", "falcon", "pyone"}
