// Carina dashboard: read-only, no build step. The service token lives in this tab's sessionStorage and
// travels only in the Authorization header. Live: a long poll on GET /events (?after=<cursor>&wait=20);
// each new event refreshes the tables, which are also refreshed every 10 s (VM CPU comes from the tick).
// Every value is inserted as text (textContent), never as HTML.
"use strict";
(() => {
  const KEY = "carina.token";
  const MAX_EVENTS = 200;
  const $ = (id) => document.getElementById(id);
  const sleep = (ms) => new Promise((done) => setTimeout(done, ms));
  let token = sessionStorage.getItem(KEY) || "";
  let cursor = null;
  let generation = 0;
  let refreshTimer = null;
  let periodic = null;

  class Unauthorized extends Error {}

  async function api(path, auth = token) {
    const res = await fetch(path, {headers: {"Authorization": "Bearer " + auth, "Accept": "application/json"},
                                   cache: "no-store"});
    if (res.status === 401) throw new Unauthorized("the token was refused (unknown, rotated or removed)");
    return res;
  }

  async function json(path) {
    const res = await api(path);
    if (!res.ok) throw new Error(path + ": HTTP " + res.status);
    return res.json();
  }

  function el(tag, text, cls) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (cls) node.className = cls;
    return node;
  }

  function badge(text) {
    const value = String(text || "-");
    const up = value.toUpperCase();
    let kind = "";
    if (/FAIL|ABORT|UNKNOWN|MISSING|ERROR|TIMEOUT/.test(up)) kind = "bad";
    else if (/^(ACTIVE|DONE|READY|RUNNING_OK|RUNN|ANNOUNCED)$|INIT_DONE|SUCCESS/.test(up)) kind = "ok";
    else if (/^(RUNNING|PENDING|INIT|NEW|ALLOCATING|ALLOCATED|REMOVING|PEND|PASSIVE)$|BOOT|PROL/.test(up)) kind = "warn";
    else kind = "info";
    return el("span", value, "badge " + kind);
  }

  function cpuCell(cpu) {
    const td = el("td", null, "num");
    if (typeof cpu !== "number" || cpu < 0) { td.textContent = "-"; return td; }
    const bar = el("span", null, "cpu");
    const fill = el("span");
    fill.style.width = Math.min(100, cpu) + "%";
    bar.append(fill);
    td.append(bar, document.createTextNode(cpu + "%"));
    return td;
  }

  function row(cells) {
    const tr = document.createElement("tr");
    for (const cell of cells) {
      if (cell instanceof HTMLTableCellElement) tr.append(cell);
      else if (cell instanceof Node) { const td = el("td"); td.append(cell); tr.append(td); }
      else tr.append(el("td", cell === null || cell === undefined || cell === "" ? "-" : cell));
    }
    return tr;
  }

  function fill(id, rows, countId) {
    $(id).tBodies[0].replaceChildren(...rows);
    if (countId) $(countId).textContent = "(" + rows.length + ")";
  }

  function renderEnvs(envs) {
    fill("envs", envs.map((e) => row([e.envid, e.name, badge(e.policy_status), badge(e.status),
                                       el("td", e.numVMs, "num"), e.url])), "envs-count");
  }

  function renderVms(vms) {
    fill("vms", vms.map((v) => row([v.vmid, v.envid, v.slot, v.hostname, v.ipaddress, badge(v.status),
                                     cpuCell(v.cpu)])), "vms-count");
  }

  function renderJobs(jobs) {
    const newest = jobs.slice(-50).reverse();
    fill("jobs", newest.map((j) => row([j.jobid, j.envid, j.name, j.type, j.submit, badge(j.status)])),
         "jobs-count");
    $("jobs-count").textContent = "(" + jobs.length + ")";
  }

  // Pools and requests belong to the global scheduler: shown only when their routes answer 200.
  async function optional(name) {
    const card = $(name + "-card");
    try {
      const res = await api("/" + name);
      if (!res.ok) { card.hidden = true; return; }
      const rows = await res.json();
      if (!Array.isArray(rows)) { card.hidden = true; return; }
      const keys = rows.length ? Object.keys(rows[0]).filter((k) => typeof rows[0][k] !== "object"
                                                                    || rows[0][k] === null) : [];
      const head = document.createElement("tr");
      keys.forEach((k) => head.append(el("th", k.replace(/^@/, ""))));
      $(name).tHead.replaceChildren(head);
      fill(name, rows.map((r) => row(keys.map((k) => r[k]))));
      card.hidden = false;
    } catch (err) {
      if (err instanceof Unauthorized) throw err;
      card.hidden = true;
    }
  }

  async function refresh() {
    const [envs, vms, jobs] = await Promise.all([json("/envs"), json("/vms"), json("/jobs")]);
    renderEnvs(envs);
    renderVms(vms);
    renderJobs(jobs);
    await Promise.all([optional("pools"), optional("requests")]);
  }

  function safely(promise) {
    promise.catch((err) => {
      if (err instanceof Unauthorized) logout(err.message);
      else setLive(false);
    });
  }

  function scheduleRefresh() {
    clearTimeout(refreshTimer);
    refreshTimer = setTimeout(() => safely(refresh()), 250);
  }

  function addEvents(events, fresh) {
    const list = $("events");
    for (const e of events) {
      const li = el("li", null, fresh ? "new" : "");
      li.dataset.id = e.id;
      li.append(el("span", (e.time || "").replace("T", " ").replace("Z", ""), "t"),
                el("span", "env " + (e.envid || "?"), "e"), el("span", e.type, "k " + e.type),
                document.createTextNode(e.msg || ""));
      list.prepend(li);
    }
    while (list.children.length > MAX_EVENTS) list.lastElementChild.remove();
  }

  function setLive(on) {
    const live = $("live");
    live.textContent = on ? "live" : "reconnecting";
    live.className = "live " + (on ? "on" : "off");
  }

  async function follow(gen) {
    while (gen === generation) {
      const asked = Date.now();
      try {
        const path = cursor === null ? "/events?limit=100"
                                     : "/events?wait=20&after=" + encodeURIComponent(cursor);
        const res = await api(path);
        if (gen !== generation) return;
        if (!res.ok) throw new Error("HTTP " + res.status);
        const events = await res.json();
        const first = cursor === null;
        cursor = res.headers.get("Carina-Cursor") || cursor;
        setLive(true);
        if (events.length) {
          addEvents(events, !first);
          if (!first) scheduleRefresh();
        } else if (Date.now() - asked < 500) {
          await sleep(1000);         // the gateway answered at once (its waiting slots are taken)
        }
      } catch (err) {
        if (gen !== generation) return;
        if (err instanceof Unauthorized) { logout(err.message); return; }
        setLive(false);
        await sleep(2000);
      }
    }
  }

  async function start() {
    generation += 1;
    cursor = null;
    $("login-view").hidden = true;
    $("dash").hidden = false;
    $("logout").hidden = false;
    $("events").replaceChildren();
    try {
      const me = await json("/services");
      $("service").textContent = me.length ? "service " + me[0].name : "";
    } catch (err) {
      if (err instanceof Unauthorized) { logout(err.message); return; }
    }
    safely(refresh());
    follow(generation);
    clearInterval(periodic);
    periodic = setInterval(() => safely(refresh()), 10000);
  }

  function logout(message) {
    sessionStorage.removeItem(KEY);
    token = "";
    generation += 1;
    clearInterval(periodic);
    $("dash").hidden = true;
    $("logout").hidden = true;
    $("login-view").hidden = false;
    $("service").textContent = "";
    $("login-error").textContent = message || "";
    setLive(false);
    $("live").textContent = "offline";
  }

  $("login").addEventListener("submit", async (event) => {
    event.preventDefault();
    const input = $("token");
    const candidate = input.value.trim();
    input.value = "";
    $("login-error").textContent = "";
    try {
      const res = await api("/envs", candidate);
      if (res.status === 403) { $("login-error").textContent = "Use a service token (the admin token sees no service)."; return; }
      if (!res.ok) { $("login-error").textContent = "The gateway answered HTTP " + res.status + "."; return; }
    } catch (err) {
      $("login-error").textContent = err instanceof Unauthorized ? "Unknown token." : "The gateway does not answer.";
      return;
    }
    token = candidate;
    sessionStorage.setItem(KEY, token);
    start();
  });
  $("logout").addEventListener("click", () => logout(""));

  if (token) start();
})();
