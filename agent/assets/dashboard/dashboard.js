// The meterd dashboard: polls /api/dashboard and renders it. No build step, no framework; uPlot draws the chart.
// Every value from the agent is written with textContent (customer and tenant ids are caller data).
"use strict";
(function () {
  const POLL_MS = 5000;
  const COLORS = ["#2e90fa", "#f79009", "#12b76a", "#9e77ed", "#f04438", "#0ba5ec", "#ee46bc", "#667085"];
  let chart = null;
  let chartKey = "";

  // A token given as #token=… is kept for this tab only and taken out of the address bar.
  const hash = new URLSearchParams(location.hash.slice(1));
  if (hash.get("token")) {
    sessionStorage.setItem("meterd-token", hash.get("token"));
    history.replaceState(null, "", location.pathname + location.search);
  }

  const $ = (id) => document.getElementById(id);

  function cell(tr, text, cls) {
    const td = document.createElement("td");
    td.textContent = text == null || text === "" ? "–" : String(text);
    if (cls) td.className = cls;
    tr.appendChild(td);
    return td;
  }

  function fill(tbody, rows, render) {
    tbody.replaceChildren();
    for (const r of rows) {
      const tr = document.createElement("tr");
      render(tr, r);
      tbody.appendChild(tr);
    }
  }

  function fmtTime(s) {
    if (!s) return "";
    return s.replace("T", " ").replace(/:\d\d\.\d+Z$/, "Z").replace(/:00Z$/, "Z");
  }

  // uPlot does not stack: each series is drawn as the running sum, and bands fill between neighbours.
  function stack(values) {
    const acc = new Array(values.length ? values[0].length : 0).fill(0);
    return values.map((v) => v.map((x, i) => (acc[i] += x)));
  }

  function chartWidth() {
    return Math.max(260, $("chart").clientWidth || document.body.clientWidth - 40);
  }

  function renderChart(usage) {
    const el = $("chart");
    el.dataset.hours = usage.hours.join(",");
    $("chart-empty").hidden = usage.hours.length > 0;
    if (usage.hours.length === 0) {
      if (chart) { chart.destroy(); chart = null; chartKey = ""; }
      return;
    }
    const raw = usage.series.map((s) => s.values);
    const data = [usage.hours].concat(stack(raw));
    const key = usage.series.map((s) => s.product + "/" + s.dimension).join("|");
    if (chart && key === chartKey) {
      chart.setData(data);
      return;
    }
    if (chart) chart.destroy();
    chartKey = key;
    const series = [{}].concat(usage.series.map((s, i) => ({
      label: s.product + " / " + s.dimension,
      stroke: COLORS[i % COLORS.length],
      fill: COLORS[i % COLORS.length] + "55",
      // The tooltip shows the series' own value, not the running sum.
      value: (u, v, si, idx) => (idx == null ? "–" : raw[si - 1][idx].toLocaleString()),
    })));
    const bands = usage.series.slice(1).map((_, i) => ({ series: [i + 2, i + 1] }));
    chart = new uPlot({
      width: chartWidth(),
      height: window.innerWidth < 700 ? 220 : 300,
      series,
      bands,
      // Hours in UTC, like the report and every timestamp on the page.
      tzDate: (ts) => uPlot.tzDate(new Date(ts * 1000), "Etc/UTC"),
      scales: { y: { range: (u, min, max) => [0, max > 0 ? max * 1.05 : 1] } },
      axes: [{}, { size: 60 }],
    }, data, el);
  }

  function renderStates(states) {
    const order = ["accepted", "pending", "rejected", "expired", "lost", "open"];
    fill($("states").tBodies[0], order, (tr, k) => {
      tr.dataset.state = k;
      cell(tr, k);
      cell(tr, states.records[k], "num");
      cell(tr, states.units[k], "num");
    });
  }

  function renderAtRisk(atRisk) {
    $("at-risk-total").textContent = atRisk.total > atRisk.rows.length
      ? "(" + atRisk.rows.length + " most urgent of " + atRisk.total + ")"
      : "(" + atRisk.total + ")";
    const why = { held: "held: tenant not mapped", deadline: "deadline close", rejected: "rejected" };
    fill($("at-risk").tBodies[0], atRisk.rows, (tr, r) => {
      tr.className = r.kind;
      tr.dataset.kind = r.kind;
      cell(tr, why[r.kind] || r.kind);
      cell(tr, fmtTime(r.hour));
      cell(tr, r.product);
      cell(tr, r.customer, "customer");
      cell(tr, r.dimension);
      cell(tr, r.units, "num");
      cell(tr, r.reason);
      cell(tr, fmtTime(r.deadline));
    });
  }

  function renderDrops(drops) {
    const ul = $("drops");
    ul.replaceChildren();
    if (drops.length === 0) {
      const li = document.createElement("li");
      li.textContent = "None: every watched series is within its usual range.";
      li.className = "muted";
      ul.appendChild(li);
      return;
    }
    for (const d of drops) {
      const li = document.createElement("li");
      li.className = "drop";
      li.textContent = fmtTime(d.hour) + " " + d.product + "/" + d.dimension +
        (d.customer ? " customer " + d.customer : "") + ": " + d.observed + " recorded, baseline " + d.baseline;
      ul.appendChild(li);
    }
  }

  function renderAccounts(accounts) {
    fill($("accounts").tBodies[0], accounts, (tr, a) => {
      cell(tr, a.name);
      cell(tr, fmtTime(a.last_successful_call) || "never");
      cell(tr, a.calls_ok, "num");
      cell(tr, a.calls_throttled, "num");
      cell(tr, a.calls_failed, "num");
      cell(tr, a.clock_skew_ms == null ? "unknown" : a.clock_skew_ms + " ms", "num");
      cell(tr, a.records_accepted + " / " + a.records_rejected + " / " + a.records_expired, "num");
    });
  }

  function renderAgent(s) {
    const dl = $("agent");
    dl.replaceChildren();
    const items = [
      ["now", fmtTime(s.now)], ["started", fmtTime(s.started_at)], ["sealed through", fmtTime(s.sealed_through)],
      ["pending records", s.pending_records], ["next deadline", fmtTime(s.most_urgent_deadline)],
      ["events stored", s.events_stored], ["late events", s.late_events],
      ["disk", (s.disk_free_bytes / 1048576).toFixed(0) + " MiB free" + (s.disk_full ? " — FULL: ingest refused" : "")],
      ["data dir", s.data_dir],
    ];
    for (const [k, v] of items) {
      const dt = document.createElement("dt");
      dt.textContent = k;
      const dd = document.createElement("dd");
      dd.textContent = v == null || v === "" ? "–" : String(v);
      dl.append(dt, dd);
    }
  }

  function render(doc) {
    const s = doc.status;
    $("version").textContent = "v" + s.version;
    const t = doc.totals;
    const verdict = $("verdict");
    const lost = Number(t.lost_units) > 0 || Number(t.lost_records) > 0;
    verdict.textContent = !t.reconciled ? "DOES NOT RECONCILE" : lost ? "reconciled, revenue lost" : "reconciled";
    verdict.className = "badge " + (!t.reconciled || lost ? "bad" : "ok");
    $("updated").textContent = "updated " + fmtTime(doc.generated_at);
    renderChart(doc.usage);
    renderStates(doc.states);
    renderAtRisk(doc.at_risk);
    renderDrops(s.usage_drops || []);
    renderAccounts(s.accounts || []);
    renderAgent(s);
    $("nodes").textContent = doc.nodes.length
      ? "Fleet: " + doc.nodes.map((n) => `${n.name} (${n.live ? `live, forward lag ${n.forward_lag_seconds} s` : "DOWN"})`).join(", ")
      : "This agent only (fleet mode is not configured).";
    document.body.dataset.ready = "1";
    document.body.dataset.generatedAt = doc.generated_at;
  }

  async function poll() {
    const headers = {};
    const token = sessionStorage.getItem("meterd-token");
    if (token) headers.Authorization = "Bearer " + token;
    let doc;
    try {
      const r = await fetch("/api/dashboard", { headers, cache: "no-store" });
      if (r.status === 401) {
        $("token-form").hidden = false;
        $("error").hidden = true;
        return;
      }
      if (!r.ok) throw new Error(r.status + " " + (await r.text()).trim());
      doc = await r.json();
    } catch (e) {
      // Shown on the page, not thrown: the agent may be restarting; the next poll tries again.
      $("error").textContent = "Cannot load /api/dashboard: " + e.message + " (retrying every " + POLL_MS / 1000 + " s)";
      $("error").hidden = false;
      return;
    }
    $("error").hidden = true;
    // Outside the try: a bug in rendering is a page error (seen in the console and by the browser test), not a
    // "cannot load" banner.
    render(doc);
  }

  $("token-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    sessionStorage.setItem("meterd-token", $("token").value.trim());
    $("token-form").hidden = true;
    poll();
  });
  window.addEventListener("resize", () => {
    if (chart) chart.setSize({ width: chartWidth(), height: window.innerWidth < 700 ? 220 : 300 });
  });
  // The next poll is scheduled when this one is done, so a slow answer (a large store: the report reads every
  // stored record) never piles requests up.
  async function loop() {
    await poll();
    setTimeout(loop, POLL_MS);
  }
  loop();
})();
