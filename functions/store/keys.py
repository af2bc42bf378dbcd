"""Every Redis key Carina uses, and nothing else: the single owner of key names.

Any module that reads or writes Redis builds its key names here, so a reader finds
the whole state model in one place. All keys share the `carina:` prefix; RQ's own
keys (`rq:*`) are RQ's business.

State model (hashes are the source of truth, streams are the event log):
- services:            set of service names
- service(s):          hash name, class, token_hash, created
- service_key(s):      hash private (PEM), public (OpenSSH) -- the controller key
- token(h):            string service name, looked up by sha256(token)
- admin_token:         string sha256 of the admin token
- config(s):           hash current (normalized JSON), source (raw text), kind, uploaded_at
- vm_files(s):         hash filename -> .vm template text
- context_files(s):    hash filename -> context file bytes
- upload_bytes(s):     string, bytes held by vm_files(s) + context_files(s) (the upload quota's counter)
- env_seq / job_seq:   global counters (ids are unique across services)
- service_envs(s):     sorted set envid (score = envid)
- env(e):              hash of one environment (service, name, status, ...; the policy state: policy_status,
                       info, metrics, policy_source, pol_* counters, see functions/policy/state.py)
- env_vms(e):          hash slot -> JSON of the VM record (endpoint, vmid, role, ip, ...)
- env_cpu(e):          string, JSON {slot: [vmid, cpu]}: each VM's last CPU from the minute refresh (apart from
                       the record: it changes every minute for every VM), rewritten whole every minute, expires
                       when no refresh renews it (`cpufig`: the hash of earlier versions, `cpu`, just expires)
- vms_gen / vms_dirty:  counter, and sorted set envid -> the counter's value at the last write of the env's VM
                       records (every writer bumps both in the same atomic step): what changed since a reader's
                       last look (the minute refresh's memory, functions.upkeep.recall)
- vms_epoch:           string, a random token set once: an emptied database has another one
- vm_index(ep, vmid):  string "envid slot" for callbacks that know only the VM id
- env_op(e):           string jobid of the running create/scale/remove (the 409 guard)
- env_lock(e):         string owner token with TTL (one writer per environment)
- env_events(e):       stream of the environment's events
- service_jobs(s):     sorted set jobid (score = jobid)
- job(j):              hash of one job
- service_events(s):   stream of the service's events
- hostkeys:            hash "<service> <proxy URL> <vmid> <nonce>" -> pinned SSH host key (type base64)
- callback_secret:     string HMAC key for per-VM callback tokens
- callback_gate(e, slot, nonce): hash with TTL, a VM's callback rate limit and its last queued reports
- callback_inbox(e):   list of accepted callbacks of the environment not yet applied (oldest first)
- callback_drains:     sorted set envid -> when its inbox drain is due again (a drain queued, leased or retried)
- tick(name, minute):  string, SET NX per minute so several schedulers fire once
- inflight:            set of envids with unfinished work (re-driven on start and every minute)
- group(g):            hash of one environment group (members, dependencies, jobs, per-member spec and envid)
- groups_active:       set of group ids whose member creates have not all ended (re-checked every minute)
- gs_global:           hash current (normalized JSON), source, kind, uploaded_at -- the global configuration
- gs_seq:              counter of global-scheduler request ids
- gs_request(id):      hash of one request (gs.model.Request.to_hash() + slot, nonce, ended)
- gs_status(st):       sorted set reqid (score = reqid) of the requests in status st (PEND, ALLOCATED, ...)
- gs_service_reqs(s):  sorted set reqid of the service's requests (every status still kept)
- gs_env_slots(e):     hash slot -> reqid: the request each VM slot of the environment holds or waits for
- gs_pool_usage / gs_service_usage: hashes "<name>:vcpus" / "<name>:mem" -> what ALLOCATED requests hold
- gs_lock:             string owner token with TTL (one allocator at a time)
- gs_reclaimed:        hash envid -> when the scheduler last reclaimed a VM of it
- gs_dirty / gs_alloc_mark: "allocation wanted" flag; mark of the queued allocation job (dedupe)
- watch / watch_next / watch_seen / watch_due / watch_lock: environments waiting on OpenNebula, when each is
                       looked at next, what the watcher saw, and the watcher's own schedule (store.watching)
"""

from __future__ import annotations

PREFIX = "carina:"


def services() -> str:
    return f"{PREFIX}services"


def service(name: str) -> str:
    return f"{PREFIX}svc:{name}"


def service_key(name: str) -> str:
    return f"{PREFIX}svc:{name}:sshkey"


def token(token_hash: str) -> str:
    return f"{PREFIX}token:{token_hash}"


def admin_token() -> str:
    return f"{PREFIX}admin_token"


def config(name: str) -> str:
    return f"{PREFIX}svc:{name}:config"


def vm_files(name: str) -> str:
    return f"{PREFIX}svc:{name}:vmfiles"


def context_files(name: str) -> str:
    return f"{PREFIX}svc:{name}:ctxfiles"


def upload_bytes(name: str) -> str:
    """String: bytes (as stored) of the service's uploaded .vm and context files; written with them by the
    `save_file` script, recounted from both hashes when missing (tenants.recount_uploads)."""
    return f"{PREFIX}svc:{name}:upload_bytes"


def env_seq() -> str:
    return f"{PREFIX}seq:env"


def job_seq() -> str:
    return f"{PREFIX}seq:job"


def service_envs(name: str) -> str:
    return f"{PREFIX}svc:{name}:envs"


def env(envid: str) -> str:
    return f"{PREFIX}env:{envid}"


def env_vms(envid: str) -> str:
    return f"{PREFIX}env:{envid}:vms"


def env_cpu(envid: str) -> str:
    return f"{PREFIX}env:{envid}:cpufig"


def vms_gen() -> str:
    return f"{PREFIX}vms:gen"


def vms_dirty() -> str:
    return f"{PREFIX}vms:dirty"


def vms_epoch() -> str:
    return f"{PREFIX}vms:epoch"


def vm_index(endpoint: str, vmid: int | str) -> str:
    return f"{PREFIX}vmidx:{endpoint}:{vmid}"


def env_op(envid: str) -> str:
    return f"{PREFIX}env:{envid}:op"


def env_lock(envid: str) -> str:
    return f"{PREFIX}env:{envid}:lock"


def env_events(envid: str) -> str:
    return f"{PREFIX}env:{envid}:events"


def service_jobs(name: str) -> str:
    return f"{PREFIX}svc:{name}:jobs"


def job(jobid: str) -> str:
    return f"{PREFIX}job:{jobid}"


def service_events(name: str) -> str:
    return f"{PREFIX}svc:{name}:events"


def hostkeys() -> str:
    return f"{PREFIX}hostkeys"


def callback_secret() -> str:
    return f"{PREFIX}callback_secret"


def install_id() -> str:
    """This installation's id (tags every VM: CARINA_INSTALL); also kept in CARINA_HOME/install.id."""
    return f"{PREFIX}install_id"


def tick(name: str, minute: int) -> str:
    return f"{PREFIX}tick:{name}:{minute}"


def inflight() -> str:
    return f"{PREFIX}inflight"


def env_rerun(envid: str) -> str:
    """String with TTL: a drive found the environment's lock taken and asks its holder to kick a drive when done."""
    return f"{PREFIX}env:{envid}:rerun"


def env_kick(envid: str) -> str:
    """String: due time (epoch) of the drive job already queued for the environment (kick dedupe), with TTL."""
    return f"{PREFIX}env:{envid}:kick"


def callback_refusals(envid: str, minute: int) -> str:
    """Counter with TTL: refused callbacks recorded for the environment in that minute (caps the event flood)."""
    return f"{PREFIX}env:{envid}:refused:{minute}"


def callback_gate(envid: str, slot: str, nonce: str) -> str:
    """Hash with TTL, one per VM incarnation: its callback token bucket (tokens, ts, throttled) and the values of
    the last callback of each kind queued for it (last:net, last:status), run by the `callback_ingest` script."""
    return f"{PREFIX}env:{envid}:cbgate:{slot}:{nonce}"


def kick_schedule() -> str:
    """Sorted set envid -> due time (epoch) of delayed drives, pumped onto the queue by every worker."""
    return f"{PREFIX}kicks"


def callback_retries() -> str:
    """Sorted set JSON payload -> due time (epoch) of callbacks to apply again (env lock was busy),
    pumped onto the queue by every worker (callbacks.pump_retries)."""
    return f"{PREFIX}callback_retries"


def group(gid: str) -> str:
    """Hash of one environment group (gid = its first member's envid): service, name, members, dependencies,
    jobs (JSON lists), spec:<i> (each member's spec snapshot), env:<i> (envid given to member i)."""
    return f"{PREFIX}group:{gid}"


def groups_active() -> str:
    """Set of group ids whose chain of member creates has not ended (re-checked by recovery and the tick)."""
    return f"{PREFIX}groups:active"


# ---------------------------------------------------------------- the global scheduler


def gs_global() -> str:
    """Hash: the global configuration (current = normalized JSON, source, kind, uploaded_at)."""
    return f"{PREFIX}gs:global"


def gs_seq() -> str:
    return f"{PREFIX}gs:seq"


def gs_request(reqid: int | str) -> str:
    """Hash of one request: gs.model.Request.to_hash() plus slot, nonce (the VM incarnation using it), ended."""
    return f"{PREFIX}gs:req:{reqid}"


def gs_status(status: str) -> str:
    """Sorted set reqid (score = reqid) of the requests whose status is `status`."""
    return f"{PREFIX}gs:status:{status}"


def gs_service_reqs(name: str) -> str:
    """Sorted set reqid (score = reqid) of the service's requests still kept."""
    return f"{PREFIX}gs:svc:{name}:reqs"


def gs_env_slots(envid: str) -> str:
    """Hash slot -> reqid: the request each VM slot of the environment holds (ALLOCATED) or waits for (PEND)."""
    return f"{PREFIX}gs:env:{envid}:slots"


def gs_pool_usage() -> str:
    """Hash "<pool>:vcpus" / "<pool>:mem" -> capacity held by ALLOCATED requests (recomputable from them)."""
    return f"{PREFIX}gs:usage:pool"


def gs_service_usage() -> str:
    """Hash "<service>:vcpus" / "<service>:mem" -> capacity held by ALLOCATED requests (recomputable)."""
    return f"{PREFIX}gs:usage:service"


def gs_lock() -> str:
    """String owner token with TTL: one allocation pass at a time across workers."""
    return f"{PREFIX}gs:lock"


def gs_reclaimed() -> str:
    """Hash envid -> epoch of the scheduler's last reclaim from that environment (once per minute each)."""
    return f"{PREFIX}gs:reclaimed"


def gs_dirty() -> str:
    """String flag: capacity was given back or a request arrived; the next tick call allocates."""
    return f"{PREFIX}gs:dirty"


def gs_alloc_mark() -> str:
    """String with TTL: an allocation job is queued (functions.tasks.gs_allocate), don't queue another."""
    return f"{PREFIX}gs:alloc_mark"


# ---------------------------------------------------------------- waiting on OpenNebula (store.watching)


def watch() -> str:
    """Hash envid -> JSON watch entry (service, endpoint, proxy, {vmid: state last seen}) of the environments
    waiting on OpenNebula (a VM booting or going away); the watcher polls them in one call per endpoint."""
    return f"{PREFIX}watch"


def watch_due() -> str:
    """Sorted set with the one member `watch` -> when the next watcher pass is due (epoch); a pass taken by a
    worker's pump is leased (pushed on), so one pass runs at a time."""
    return f"{PREFIX}watch:due"


def watch_next() -> str:
    """Sorted set envid -> when the watcher next looks at the environment's VMs (clock time): soon after it
    started waiting, then less and less often while they do not change."""
    return f"{PREFIX}watch:next"


def watch_seen() -> str:
    """Hash "envid:vmid" -> JSON of the VM as the watcher saw it change (with `at`), read once by the drive it
    woke instead of asking OpenNebula again; the whole hash expires a minute after its last write."""
    return f"{PREFIX}watch:seen"


def watch_lock() -> str:
    """String owner token with TTL: held by the watcher pass running now (one at a time)."""
    return f"{PREFIX}watch:lock"


# ---------------------------------------------------------------- callbacks applied in batches (ops.cbinbox)


def callback_inbox(envid: str) -> str:
    """List, oldest first: the environment's accepted callbacks not applied yet (JSON {v, k, f, s, t}), appended by
    the gateway's `callback_ingest` script, removed by the drain's `callback_step` once applied."""
    return f"{PREFIX}env:{envid}:cbinbox"


def callback_drains() -> str:
    """Sorted set envid -> epoch: the environment has a drain of its inbox queued or running until then (a lease:
    when it passes, every worker's pump queues the drain again, so a killed drain loses nothing); a drain that
    found the env lock busy sets its retry time here. The drain removes the entry once the inbox is empty."""
    return f"{PREFIX}callback_drains"
