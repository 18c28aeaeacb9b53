// cortex /ui: polls the gateway's GET /fleet and GET /fleet/stats every 2 s and draws
// the fleet (nodes, devices, models), the catalogue and per-model charts as inline SVG.
// No build step, no dependencies, nothing fetched from anywhere but this gateway.
// GET /fleet's shape is protocol/fleet.py (FleetView): every field is always there,
// null only where the type says so, so nothing here falls back on a missing one.
"use strict";

(() => {
  const POLL_MS = 2000;
  const SPAN_S = 600;
  const STEP_S = 10;
  const KEY_STORE = "cortex.apiKey";
  const COLORS = ["#2f6fde", "#e8710a", "#1a9e5c", "#c5221f", "#9334e6",
    "#0f9fb5", "#b8860b", "#d01884", "#5f6368", "#4e7d2d"];
  const SVG_NS = "http://www.w3.org/2000/svg";
  const colorOf = new Map(); // model id -> colour, stable for the page's life

  const $ = (id) => document.getElementById(id);

  // -- DOM helpers ------------------------------------------------------------------

  function build(el, attrs, children) {
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "text") el.textContent = String(value);
      else el.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : String(child));
    }
    return el;
  }
  const h = (tag, attrs, ...children) => build(document.createElement(tag), attrs, children);
  const svg = (tag, attrs, ...children) =>
    build(document.createElementNS(SVG_NS, tag), attrs, children);

  function fmt(value) {
    if (value === null || value === undefined || Number.isNaN(value)) return "–";
    const abs = Math.abs(value);
    const digits = abs >= 100 ? 0 : abs >= 10 ? 1 : 2;
    return String(Number(value.toFixed(digits)));
  }
  const mb = (value) => (typeof value === "number" ? `${Math.round(value)} MB` : "?");
  const num = (value) => typeof value === "number" && Number.isFinite(value);

  function ago(seconds) {
    if (seconds < 120) return `${Math.max(0, Math.round(seconds))}s ago`;
    if (seconds < 7200) return `${Math.round(seconds / 60)}m ago`;
    return `${Math.round(seconds / 3600)}h ago`;
  }

  function color(model) {
    if (!colorOf.has(model)) colorOf.set(model, COLORS[colorOf.size % COLORS.length]);
    return colorOf.get(model);
  }

  // -- the gateway --------------------------------------------------------------------

  async function getJSON(path) {
    const key = localStorage.getItem(KEY_STORE);
    const response = await fetch(path, {
      headers: key ? { Authorization: `Bearer ${key}` } : {},
      cache: "no-store",
    });
    let body = null;
    try { body = await response.json(); } catch { /* not JSON: the status says enough */ }
    if (!response.ok) {
      const error = new Error((body && body.error && body.error.message) || response.statusText);
      error.status = response.status;
      throw error;
    }
    return body;
  }

  let timer = null;
  let latest = 0; // only the latest poll schedules the next one

  async function poll() {
    clearTimeout(timer);
    const mine = ++latest;
    try {
      const stats = getJSON(`fleet/stats?span_s=${SPAN_S}&step_s=${STEP_S}`)
        .catch((error) => (error.status === 401 ? Promise.reject(error) : null));
      const fleet = await getJSON("fleet");
      renderFleet(fleet);
      renderCharts(await stats);
      setConnection("live", `live · updated ${new Date().toLocaleTimeString()}`);
      notice(null);
    } catch (error) {
      if (error.status === 401) {
        // the fleet's data is an admin route: an API key does not open it
        setConnection("key", "admin token needed");
        notice(
          "The fleet view needs this gateway's admin token: paste it above (it stays in " +
            `this browser). The gateway says: ${error.message}`,
        );
      } else {
        const why = error.status ? `${error.status}: ${error.message}` : "unreachable";
        setConnection("down", `gateway ${why} · retrying`);
        notice(null);
      }
    } finally {
      if (mine === latest) timer = setTimeout(poll, POLL_MS);
    }
  }

  function setConnection(state, text) {
    const el = $("connection");
    el.dataset.state = state;
    el.textContent = text;
    if (state === "live") delete document.body.dataset.stale;
    else document.body.dataset.stale = "";
  }

  function notice(text) {
    const el = $("notice");
    el.hidden = !text;
    el.textContent = text || "";
  }

  // -- the fleet ------------------------------------------------------------------------

  function renderFleet(fleet) {
    const { nodes, models } = fleet;
    const up = nodes.filter((node) => node.up && node.compatible).length;
    $("summary").textContent =
      `${up}/${nodes.length} nodes up · ${fleet.requests_last_min} requests in the last minute`;

    const now = Date.now() / 1000;
    $("nodes").replaceChildren(
      ...(nodes.length ? nodes.map((node) => nodeCard(node, now)) : [h("p", { class: "empty", text: "No nodes configured." })]),
    );
    $("catalogue").tBodies[0].replaceChildren(
      ...(models.length ? models.map(catalogueRow) : [h("tr", {}, h("td", { colspan: 7, class: "empty", text: "No models in the catalogue." }))]),
    );
  }

  function nodeCard(node, now) {
    const usable = node.up && node.compatible;
    // an up node that speaks another contract version is shown, never used: red, like down
    const status = !node.up ? "down" : node.compatible ? "up" : "incompatible";
    const seen = !node.up && node.last_seen !== null ? `last seen ${ago(now - node.last_seen)}` : null;
    const why = [node.error, seen].filter(Boolean).join(" · ");
    const models = node.models;
    return h("article", { class: "node", "data-node": node.name, "data-up": String(node.up) },
      h("div", { class: "node-head" },
        h("h3", { class: "node-name", text: node.name }),
        h("span", { class: `badge node-status ${usable ? "up" : "down"}`, text: status }),
        h("span", { class: "endpoint", text: node.endpoint })),
      why ? h("p", { class: "node-error", text: why }) : null,
      node.devices.map(deviceView),
      models.length
        ? h("div", { class: "table-wrap" }, h("table", { class: "models" },
          h("thead", {}, h("tr", {},
            h("th", { text: "model" }), h("th", { text: "state" }),
            h("th", { class: "num", text: "in flight" }), h("th", { class: "num", text: "queued" }),
            h("th", { class: "num", text: "memory" }))),
          h("tbody", {}, models.map((model) => modelRow(model, node.name)))))
        : h("p", { class: "empty", text: usable ? "No models loaded." : "" }),
    );
  }

  function deviceView(device) {
    const total = device.memory_total_mb;
    const free = device.memory_free_mb;
    const used = device.memory_used_by_models_mb;
    const budget = device.memory_budget_mb; // null: the node has no budget
    return h("div", { class: "device", "data-device": device.id },
      h("div", { class: "device-name", text: device.name || device.id }),
      total > 0
        ? meter("memory", total - free, total, `${Math.round(total - free)} / ${mb(total)}`)
        : h("div", { class: "muted", text: "memory unknown" }),
      budget !== null && budget > 0
        ? meter("budget", used, budget, `${Math.round(used)} / ${mb(budget)} models`)
        : used > 0 ? h("div", { class: "meter-value muted", text: `models ${mb(used)}` }) : null,
    );
  }

  function meter(kind, used, total, label) {
    const fraction = total > 0 ? Math.min(1, Math.max(0, used / total)) : 0;
    const fill = h("div", { class: `fill${fraction >= 0.9 ? " full" : fraction >= 0.7 ? " warn" : ""}` });
    fill.style.width = `${(fraction * 100).toFixed(1)}%`;
    return h("div", { class: "meter", "data-kind": kind, title: `${(fraction * 100).toFixed(0)}%` },
      h("span", { class: "meter-label", text: kind }),
      h("div", { class: "bar" }, fill),
      h("span", { class: "meter-value", text: label }));
  }

  function stateBadge(state) {
    return h("span", { class: `state state-${state}`, text: state });
  }

  function modelRow(model, nodeName) {
    const state = model.state;
    return h("tr", { class: "model", "data-model": model.id, "data-node": nodeName, "data-state": state },
      h("td", { class: "model-id", text: model.id }),
      h("td", { class: "model-state" }, stateBadge(state)),
      h("td", { class: "model-in-flight num", text: model.in_flight }),
      h("td", { class: "model-queued num", text: model.queued }),
      h("td", { class: "model-memory num", text: model.memory_mb ? mb(model.memory_mb) : "" }));
  }

  // A model that may run several copies: how many, and the last decision with its reason.
  function replicasNote(replicas) {
    if (!replicas || replicas.max_replicas <= 1) return "";
    const last = replicas.last_decision;
    let text = `${replicas.copies.length} of ${replicas.min_replicas}-${replicas.max_replicas} copies`;
    if (last) {
      text += `; last: ${last.action}${last.node ? ` on ${last.node}` : ""}: ${last.reason}`;
      if (last.error) text += ` (failed: ${last.error})`;
    }
    return h("div", { class: "muted model-replicas", text });
  }

  function catalogueRow(model) {
    const placements = model.placements;
    const state = placements.length
      ? placements.map((p) => h("div", {}, stateBadge(p.state), ` on ${p.node}`))
      : h("span", { class: "muted", text: "not loaded" });
    return h("tr", { class: "catalogue-model", "data-model": model.id },
      h("td", { class: "model-id" }, h("strong", { text: model.id })),
      h("td", { class: "model-placements" }, state, replicasNote(model.replicas)),
      h("td", { class: "num model-rate", text: model.requests_last_min }),
      h("td", { text: model.pinned ? "yes" : "" }),
      h("td", { class: "num", text: model.memory_estimate_mb !== null ? mb(model.memory_estimate_mb) : "–" }),
      h("td", { class: "source", text: model.source || "" }),
      h("td", { text: model.aliases.join(", ") }));
  }

  // -- the charts -------------------------------------------------------------------

  const CHARTS = [
    { id: "requests", title: "Requests / min", unit: "",
      values: (m, step) => (m.requests || []).map((n) => (n * 60) / step) },
    { id: "ttft", title: "Time to first token (s)", unit: " s", values: (m) => m.ttft_s || [] },
    { id: "tokens", title: "Output tokens / s", unit: "", values: (m) => m.tokens_per_s || [] },
  ];

  function renderCharts(stats) {
    const models = (stats && stats.models) || {};
    const ids = Object.keys(models).sort();
    const buckets = (stats && stats.buckets) || SPAN_S / STEP_S;
    const step = (stats && stats.step_s) || STEP_S;
    $("legend").replaceChildren(...ids.map((id) => h("li", { "data-model": id },
      svg("svg", { width: 12, height: 12, viewBox: "0 0 12 12", "aria-hidden": "true" },
        svg("rect", { width: 12, height: 12, rx: 3, fill: color(id) })),
      id)));
    $("charts").replaceChildren(...CHARTS.map((chart) => h("figure", { class: "chart", "data-chart": chart.id },
      h("figcaption", { text: chart.title }),
      lineChart(ids.map((id) => ({ name: id, color: color(id), values: chart.values(models[id], step) })),
        buckets, step, chart.unit))));
  }

  function niceMax(value) {
    if (!(value > 0)) return 1;
    const power = 10 ** Math.floor(Math.log10(value));
    return [1, 2, 5, 10].map((m) => m * power).find((m) => m >= value);
  }

  // One SVG line chart: a line per series over the time buckets, a gap where a bucket is
  // null, a dot on every point (with a tooltip), three grid lines and relative time labels.
  function lineChart(series, buckets, step, unit) {
    const W = 480, H = 190, L = 46, R = 12, T = 10, B = 24;
    const values = series.flatMap((s) => s.values).filter(num);
    const top = niceMax(Math.max(0, ...values));
    const x = (i) => L + ((i + 0.5) * (W - L - R)) / buckets;
    const y = (v) => T + (H - T - B) * (1 - v / top);
    const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img" });
    for (const f of [0, 0.5, 1]) {
      chart.append(
        svg("line", { class: "grid", x1: L, x2: W - R, y1: y(top * f), y2: y(top * f) }),
        svg("text", { class: "axis", x: L - 6, y: y(top * f) + 4, "text-anchor": "end", text: fmt(top * f) }));
    }
    const minutes = (buckets * step) / 60;
    for (const f of [0, 0.5, 1]) {
      const label = f === 1 ? "now" : `-${fmt(minutes * (1 - f))}m`;
      const anchor = f === 0 ? "start" : f === 1 ? "end" : "middle";
      chart.append(svg("text", { class: "axis", x: L + f * (W - L - R), y: H - 6, "text-anchor": anchor, text: label }));
    }
    if (!values.length) {
      chart.append(svg("text", { class: "nodata", x: (L + W - R) / 2, y: (T + H - B) / 2 + 5, "text-anchor": "middle", text: "no requests yet" }));
      return chart;
    }
    for (const s of series) {
      let d = "";
      let pen = "M";
      s.values.forEach((v, i) => {
        if (!num(v)) { pen = "M"; return; }
        d += `${pen}${x(i).toFixed(1)},${y(v).toFixed(1)}`;
        pen = "L";
      });
      chart.append(svg("path", { class: "series", d, stroke: s.color, "data-model": s.name }));
      s.values.forEach((v, i) => {
        if (!num(v) || (v === 0 && unit === "")) return;
        chart.append(svg("circle", { cx: x(i).toFixed(1), cy: y(v).toFixed(1), r: 2.5, fill: s.color },
          svg("title", { text: `${s.name}: ${fmt(v)}${unit}, ${ago((buckets - i - 0.5) * step)}` })));
      });
    }
    return chart;
  }

  // -- the API key --------------------------------------------------------------------

  function setUpKeyForm() {
    const input = $("api-key");
    input.value = localStorage.getItem(KEY_STORE) || "";
    $("key-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const key = input.value.trim();
      if (key) localStorage.setItem(KEY_STORE, key);
      else localStorage.removeItem(KEY_STORE);
      poll();
    });
    $("forget-key").addEventListener("click", () => {
      localStorage.removeItem(KEY_STORE);
      input.value = "";
      poll();
    });
  }

  setUpKeyForm();
  renderCharts(null);
  poll();
})();
