// Vigil's status page: polls its data every second and renders it with
// textContent only (member names, reasons and events are data, never markup).
"use strict";
(function () {
  const router = location.pathname.endsWith("/_vigil/ui");
  const source = router ? "/_vigil/status" : "/cluster";
  const hash = new URLSearchParams(location.hash.slice(1));
  if (hash.get("token")) {
    sessionStorage.setItem("vigil-token", hash.get("token"));
    history.replaceState(null, "", location.pathname);  // the token leaves the address bar
  }
  const token = sessionStorage.getItem("vigil-token");
  const GOOD = ["ready", "alive", "active", "standby", "leader", "self", "busy", "done", "running"];
  const BAD = ["failed", "fenced", "down", "hung", "dead", "suspect", "unregistered"];

  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }
  function pill(text) {
    const t = String(text);
    return el("span", t, "pill " + (GOOD.includes(t) ? "ok" : BAD.includes(t) ? "bad" : "warn"));
  }
  function table(id, heads, rows) {
    const t = document.getElementById(id);
    const head = el("tr");
    heads.forEach(h => head.appendChild(el("th", h)));
    t.tHead.replaceChildren(head);
    t.tBodies[0].replaceChildren(...rows.map(cells => {
      const tr = el("tr");
      cells.forEach(c => { const td = el("td"); if (c instanceof Node) td.appendChild(c); else td.textContent = c ?? ""; tr.appendChild(td); });
      return tr;
    }));
  }
  function age(s) { return s === null || s === undefined ? "-" : Math.round(s * 1000) + " ms"; }
  function verdict(m) {
    const d = el("div");
    d.appendChild(pill(m.verdict));
    (m.reasons || []).forEach(r => d.appendChild(el("div", r, "reasons")));
    return d;
  }

  function agentPage(d) {
    document.getElementById("title").textContent = "Vigil: " + d.cluster + " (seen from " + d.node + ")";
    document.getElementById("leader").textContent = d.leader ? "leader " + d.leader.name + ", token " + d.leader.token : "NO LEADER";
    document.getElementById("leader").className = d.leader ? "" : "pill bad";
    document.getElementById("vip").textContent = d.vips.length ? "VIP " + d.vips.join(", ") + " on " + (d.vip_holder || "nobody") : "";
    table("members", ["member", "role", "state", "health", "heartbeat", "domain", "engine", "payloads", "version"],
      d.members.map(m => [el("b", m.name), pill(m.role), pill(m.state), verdict(m),
        m.heard === "self" ? "this node" : age(m.heartbeat_age) + " (" + m.heard + ")", m.domain,
        m.engine ? pill(m.engine.verdict) : "-", m.payloads, m.version]));
    table("jobs", ["job", "state", "done", "nodes"],
      d.jobs.map(j => [j.id, pill(j.state), j.done + " / " + j.total + " (" + j.percent + " %)", (j.nodes || []).join(", ")]));
    document.getElementById("jobs-section").hidden = !d.jobs.length;
    table("events", ["time", "node", "event", "cause"],
      d.events.map(e => [new Date(e.at * 1000).toLocaleTimeString(), e.node, pill(e.kind), e.cause]));
    document.getElementById("problems").textContent = (d.problems || []).join("; ");
  }

  function routerPage(d) {
    document.getElementById("title").textContent = "Vigil router";
    document.getElementById("leader").textContent = (d.panic ? "PANIC: routing to every node not confirmed gone; " : "") +
      "etcd " + (d.etcd_ok ? "ok" : "unreachable") + ", queue " + d.queue.waiting + ", in flight " + d.limits.inflight;
    document.getElementById("members-title").textContent = "Backends";
    table("members", ["backend", "state", "eligible", "heard", "in flight / limit", "latency", "served", "failures", "why not"],
      Object.entries(d.backends).map(([n, b]) => [el("b", n), pill(b.state || "-"), pill(b.eligible ? "ready" : "down"),
        pill(b.alive ? "alive" : "suspect"), b.outstanding + " / " + b.limit, b.latency_ms + " ms", b.served, b.failures, b.why_not || ""]));
    document.getElementById("jobs-section").hidden = true;
    document.getElementById("events-section").hidden = true;
  }

  async function refresh() {
    try {
      const r = await fetch(source, {headers: token ? {"Authorization": "Bearer " + token} : {}, cache: "no-store"});
      if (r.status === 401) throw new Error("this page needs the API's token: open it as …/ui#token=TOKEN");
      if (!r.ok) throw new Error(source + ": HTTP " + r.status);
      const d = await r.json();
      (router ? routerPage : agentPage)(d);
      document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
      document.getElementById("stale").style.display = "none";
      document.body.dataset.loaded = "yes";
    } catch (e) {
      document.getElementById("stale").style.display = "block";
      document.getElementById("stale").textContent = String(e.message || e);
    }
  }
  refresh();
  setInterval(refresh, 1000);
})();
