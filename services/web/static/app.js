// bpbench dashboard: plain JS, no build step. Reads the API with the sign-in cookie (same origin);
// every write sends `X-Requested-With: bpbench`, which the API requires of cookie-authenticated writes (CSRF).
"use strict";

const FINAL = new Set(["succeeded", "failed", "cancelled"]);
const POLL_MS = 2000;
const PLOT_CONFIG = { displaylogo: false, responsive: true };
// How each kind's trials are charted: the axis title, the unit's scale and each series' name.
const TRIAL_AXES = {
  train: { title: "samples/s per window", scale: 1, name: (n) => n },
  gemm: { title: "GFLOP/s", scale: 1e9, name: (n) => `${n}×${n}` },
};
const state = {
  session: null, devices: {}, jobsOffset: 0, jobsSeq: 0, jobsTimer: null, jobTimer: null, jobSeq: 0, compareSeq: 0,
  jobLog: { jobId: null, after: 0 },
};

// --- helpers ---------------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(message, status, body) {
    super(message);
    this.status = status;
    this.body = body;
  }
}

function describeError(body, status) {
  if (body && typeof body === "object") {
    if (body.message) return body.message;
    if (Array.isArray(body.detail)) return body.detail.map((d) => d.message || JSON.stringify(d)).join("; ");
    if (body.detail) return String(body.detail);
  }
  return `HTTP ${status}`;
}

async function api(path, options = {}) {
  const headers = { Accept: "application/json", "X-Requested-With": "bpbench" };
  if (options.body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method: options.method || "GET",
    credentials: "same-origin",
    headers,
    body: options.body === undefined ? undefined : JSON.stringify(options.body),
  });
  const text = await response.text();
  let body = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch (_) {
    body = text;
  }
  if (!response.ok) throw new ApiError(describeError(body, response.status), response.status, body);
  return body;
}

function query(params) {
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== null && value !== undefined && value !== "") search.set(key, value);
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const $ = (id) => document.getElementById(id);

function fmt(value, digits = 3) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  const abs = Math.abs(value);
  if (abs !== 0 && (abs >= 1e6 || abs < 1e-3)) return value.toExponential(2);
  return value.toLocaleString("en-US", { maximumSignificantDigits: digits + 1 });
}

function fmtSeconds(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 60) return `${seconds.toFixed(1)} s`;
  const minutes = Math.floor(seconds / 60);
  return `${minutes} min ${Math.round(seconds - 60 * minutes)} s`;
}

function fmtTime(iso) {
  return iso ? new Date(iso).toLocaleString("en-GB", { hour12: false }) : "–";
}

function deviceLabel(id, fallback) {
  const device = state.devices[id];
  return device ? `${device.name} (${id.slice(0, 6)})` : fallback || id || "–";
}

function flagBadge(verdict) {
  if (!verdict || !verdict.flag) return null;
  const sign = verdict.change_pct > 0 ? "+" : "";
  return el("span", {
    class: `badge ${verdict.flag}`,
    title: verdict.reason,
    "data-flag": verdict.flag,
  }, `${verdict.flag === "regression" ? "▼" : "▲"} ${verdict.flag} ${sign}${verdict.change_pct.toFixed(1)}%`);
}

function plot(id, traces, layout) {
  const base = {
    margin: { l: 70, r: 20, t: 40, b: 60 },
    paper_bgcolor: "rgba(0,0,0,0)",
    plot_bgcolor: "rgba(0,0,0,0)",
    font: { family: "system-ui, sans-serif", size: 12 },
  };
  const node = $(id);
  if (node.classList.contains("is-empty")) {
    node.classList.remove("is-empty");
    node.replaceChildren();
  }
  return Plotly.react(node, traces, { ...base, ...layout }, PLOT_CONFIG);
}

function emptyChart(id, message) {
  Plotly.purge($(id));
  $(id).classList.add("is-empty");
  $(id).replaceChildren(el("p", { class: "muted empty" }, message));
}

// --- session ---------------------------------------------------------------------------------------------

async function loadSession() {
  const params = new URLSearchParams(location.search);
  if (params.get("signin") === "invalid") {
    $("signin-error").hidden = false;
    history.replaceState(null, "", "/" + location.hash);
  }
  state.session = await api("/api/v1/session");
  const who = $("who");
  who.replaceChildren();
  if (state.session.signed_in) {
    who.append(`signed in as ${state.session.name} (${state.session.scopes.join(", ")}) · `);
    const out = el("a", { href: "#", id: "signout" }, "sign out");
    out.addEventListener("click", async (event) => {
      event.preventDefault();
      await api("/auth/logout", { method: "POST" });
      location.href = "/";
    });
    who.append(out);
  } else if (state.session.public_read) {
    who.append("reads are public · ");
    who.append(el("a", { href: "#signin", id: "signin-link" }, "sign in to submit"));
  } else {
    who.append("not signed in");
  }
  $("signin").hidden = state.session.can_read && !location.hash.startsWith("#signin");
  if (!state.session.can_read) $("signin").hidden = false;
  return state.session;
}

// --- device comparison -----------------------------------------------------------------------------------

function compareFilters() {
  const form = new FormData($("compare-filters"));
  return Object.fromEntries([...form.entries()].filter(([, v]) => v !== ""));
}

async function loadCompare() {
  const seq = ++state.compareSeq;
  const filters = compareFilters();
  const { spec_hash: specHash, baseline, ...rest } = filters;
  // Ask first whether anything matches: a 404 from /compare would be logged by the browser as an error.
  const probe = await api(`/api/v1/results${query({ ...rest, spec_hash: specHash, limit: 1 })}`);
  if (seq !== state.compareSeq) return;
  if (probe.total === 0) {
    $("compare-spec").textContent = "";
    $("compare-note").textContent = "No result matches these filters yet.";
    emptyChart("compare-chart", "no results");
    emptyChart("efficiency-chart", "no results");
    $("compare-table").replaceChildren();
    return;
  }
  let doc;
  try {
    doc = await api(`/api/v1/compare${query(filters)}`);
  } catch (error) {
    if (seq !== state.compareSeq) return;
    $("compare-note").textContent = error.message;
    return;
  }
  if (seq !== state.compareSeq) return;
  const flags = await api(`/api/v1/regressions${query({ spec_hash: doc.spec_hash })}`);
  const byDevice = Object.fromEntries(flags.items.map((v) => [v.device_id, v]));
  renderCompare(doc, byDevice);
}

function fillSelect(select, options, selected) {
  const first = select.options[0];
  select.replaceChildren(first);
  for (const [value, label] of options) {
    select.append(el("option", { value, ...(value === selected ? { selected: "selected" } : {}) }, label));
  }
}

// Each compare row's name: its device's, and its stack where the comparison holds that hardware through
// several stacks (one CPU through numpy, oneapi and xla: three rows of one name otherwise).
function compareLabels(doc) {
  const stacks = Object.fromEntries(doc.hardware.map((group) => [group.hardware, group.stacks.length]));
  return Object.fromEntries(doc.rows.map((r) => {
    const name = r.device_name || r.device_id;
    return [r.device_id, stacks[r.hardware || r.device_id] > 1 && r.backend ? `${name} · ${r.backend}` : name];
  }));
}

function renderCompare(doc, flags) {
  const spec = doc.spec || {};
  const labels = compareLabels(doc);
  const model = spec.model ? `${spec.model.name} ${(spec.model.layers || []).join("-")}` : "";
  $("compare-spec").textContent =
    `spec ${doc.spec_hash}: ${doc.spec && doc.spec.kind} ${model} on ${spec.dataset}, batch ${spec.batch_size}, ` +
    `${spec.dtype}, ${spec.steps} steps · baseline ${labels[doc.baseline_device_id] || doc.baseline_name} · CI: ${doc.ci_method}`;
  const differences = Object.entries(doc.stack_differences || {}).map(([field, values]) =>
    `${field} differs: ${Object.entries(values).map(([d, v]) => `${labels[d] || d} ${v ?? "–"}`).join(", ")}`);
  $("compare-note").textContent = [doc.note, doc.load_warning, ...differences].filter(Boolean).join(" · ");
  const form = $("compare-filters");
  fillSelect(form.elements.spec_hash,
    doc.candidates.map((c) => [c.spec_hash, `${c.spec_hash} · ${c.model || c.kind} b${c.batch_size} ${c.dtype} (${c.results})`]),
    compareFilters().spec_hash);
  fillSelect(form.elements.baseline, doc.rows.map((r) => [r.device_id, labels[r.device_id]]),
    compareFilters().baseline);

  const rows = doc.rows;
  const names = rows.map((r) => `${labels[r.device_id]} (${r.device_id.slice(0, 6)})`);
  const medians = rows.map((r) => r.samples_per_s.median);
  const colours = rows.map((r) => {
    const flag = flags[r.device_id] && flags[r.device_id].flag;
    return flag === "regression" ? "#c0392b" : flag === "improvement" ? "#1e8449" : "#2e86c1";
  });
  plot("compare-chart", [{
    type: "bar",
    x: names,
    y: medians,
    marker: { color: colours },
    error_y: {
      type: "data",
      symmetric: false,
      array: rows.map((r) => r.samples_per_s.ci95[1] - r.samples_per_s.median),
      arrayminus: rows.map((r) => r.samples_per_s.median - r.samples_per_s.ci95[0]),
      color: "#333",
      thickness: 1.5,
      width: 8,
    },
    text: rows.map((r) => (r.ratio === null ? "" : `×${r.ratio.toFixed(2)}`)),
    textposition: "outside",
    cliponaxis: false,
    hovertemplate: "%{x}<br>%{y:.4s} samples/s<extra></extra>",
  }], {
    title: { text: "median samples/s (95% CI whiskers), ×ratio to the baseline" },
    xaxis: { automargin: true },  // the whole name under each bar: a stack may be all that tells two apart
    yaxis: { title: { text: "samples/s" }, rangemode: "tozero" },
  });
  // A flagged efficiency (over 100%: the calibration was disturbed) is not drawn: its bar would mislead.
  const efficiency = rows.map((r) => (r.efficiency === null || r.efficiency_flag ? null : 100 * r.efficiency));
  if (efficiency.some((v) => v !== null)) {
    plot("efficiency-chart", [{
      type: "bar",
      x: names,
      y: efficiency,
      marker: { color: "#7d3c98" },
      text: rows.map((r, i) => (r.efficiency_flag ? "recalibrate" : efficiency[i] === null ? "no calibration" : `${efficiency[i].toFixed(1)}%`)),
      textposition: "outside",
      cliponaxis: false,
      customdata: rows.map((r) => (r.calibration ? `gemm job ${r.calibration.job_id.slice(0, 8)}, sizes ${r.calibration.sizes.join(",")}, ${r.calibration.created_at.slice(0, 16)}` : r.calibration_note || "")),
      hovertemplate: "%{x}<br>%{y:.2f}% of the calibrated GEMM peak<br>%{customdata}<extra></extra>",
    }], {
      title: { text: "efficiency: achieved FLOP/s over the device's calibrated GEMM peak (sizes ≥ 1024, same stack)" },
      yaxis: { title: { text: "% of peak" }, rangemode: "tozero" },
    });
  } else if (rows.some((r) => r.efficiency_flag)) {
    emptyChart("efficiency-chart", "Not drawn: the calibration gives an impossible efficiency (see the note below).");
  } else {
    emptyChart("efficiency-chart", "Efficiency needs a gemm calibration at sizes ≥ 1024 of the same dtype and stack on the device (run the standard suite).");
  }
  const notes = rows.filter((r) => r.efficiency_flag).map((r) => el("li", { class: "efficiency-flag" }, `${labels[r.device_id]}: ${r.efficiency_flag}`));
  $("efficiency-flags").replaceChildren(...notes);

  const table = $("compare-table");
  table.replaceChildren(el("thead", {}, el("tr", {},
    ...["device", "stack", "vendor", "median samples/s", "95% CI", "ratio", "efficiency", "samples/J", "runs", "trials", "flag"]
      .map((h) => el("th", {}, h)))));
  const body = el("tbody");
  // The API lists one hardware's stacks side by side; a row of the same hardware as the one above is marked.
  let previous = null;
  for (const r of rows) {
    const same = r.hardware !== null && r.hardware === previous;
    previous = r.hardware;
    body.append(el("tr", { "data-device-id": r.device_id, "data-hardware": r.hardware || "", class: same ? "same-hardware" : "" },
      el("td", {}, same ? "〃 " : "", r.device_name || r.device_id, el("span", { class: "muted" }, ` ${r.device_id}`)),
      el("td", { class: "stack" }, stackText(r.backend, r.library)),
      el("td", {}, r.vendor || "–"),
      el("td", { class: "num" }, fmt(r.samples_per_s.median, 4)),
      el("td", { class: "num" }, `${fmt(r.samples_per_s.ci95[0])} – ${fmt(r.samples_per_s.ci95[1])}`),
      el("td", { class: "num" }, r.ratio === null ? "–" : `×${r.ratio.toFixed(2)}`),
      el("td", { class: "num", title: r.efficiency_flag || r.calibration_note || "" },
        r.efficiency === null ? "–" : r.efficiency_flag ? "recalibrate ⚠" : `${(100 * r.efficiency).toFixed(1)}%`),
      el("td", { class: "num samples-per-joule", title: r.samples_per_j === null ? `energy not measured: ${r.energy_note || "no sensor"}` : `${fmt(r.mean_power_w, 3)} W` },
        r.samples_per_j === null || r.samples_per_j === undefined ? "–" : fmt(r.samples_per_j, 4)),
      el("td", { class: "num" }, r.runs),
      el("td", { class: "num" }, r.trials),
      el("td", {}, flagBadge(flags[r.device_id]) || "")));
  }
  table.append(body);
}

// A device's stack in a few words: "xla · jax 0.4.38" (backend and library as its fingerprint recorded them).
function stackText(backend, library) {
  return [backend, library].filter((part) => part).join(" · ") || "–";
}

function deviceStack(device) {
  return stackText(device.backend, device.library);
}

// --- timeline --------------------------------------------------------------------------------------------

async function bestFigures() {
  // A device's best figure: its measured GEMM peak (comparable across devices), else its best samples/s.
  const best = {};
  const gemm = await api("/api/v1/results?kind=gemm&limit=1000");
  for (const r of gemm.items) {
    const peak = r.metrics && r.metrics.peak_flops_per_s;
    if (peak && (!best[r.device_id] || best[r.device_id].value < peak)) {
      best[r.device_id] = { value: peak, text: `${fmt(peak / 1e9)} GFLOP/s (gemm ${r.dtype})` };
    }
  }
  const train = await api("/api/v1/results?kind=train&limit=500");
  for (const r of train.items) {
    if (best[r.device_id] && best[r.device_id].gemm !== false) continue;
    if (r.samples_per_s && (!best[r.device_id] || best[r.device_id].value < r.samples_per_s)) {
      best[r.device_id] = { value: r.samples_per_s, gemm: false, text: `${fmt(r.samples_per_s)} samples/s (${r.model} b${r.batch_size})` };
    }
  }
  return best;
}

async function loadTimeline() {
  const [timeline, best] = await Promise.all([api("/api/v1/timeline"), bestFigures()]);
  const vendors = timeline.vendors;
  const known = new Set(vendors.map((v) => v.vendor.toLowerCase()));
  const measured = {};
  for (const device of Object.values(state.devices)) {
    const key = known.has((device.vendor || "").toLowerCase()) ? device.vendor.toLowerCase() : "other";
    (measured[key] = measured[key] || []).push(device);
  }
  const rows = [...vendors.map((v) => v.vendor)].reverse();
  if (measured.other) rows.unshift("other");
  const rowOf = (v) => v.vendor;
  const traces = [{
    type: "bar",
    orientation: "h",
    y: vendors.map(rowOf),
    base: vendors.map((v) => v.entered_from),
    x: vendors.map((v) => v.entered_to - v.entered_from + 1),
    marker: { color: "#2e86c1" },
    text: vendors.map((v) => `${v.platform} (${v.years})`),
    textposition: "outside",
    textfont: { size: 11 },
    cliponaxis: false,
    hovertext: vendors.map((v) => `${v.vendor}: ${v.platform}<br>${v.entered}<br>${v.note}`),
    hoverinfo: "text",
    name: "entered deep learning",
  }, {
    type: "scatter",
    mode: "markers",
    y: vendors.filter((v) => v.platform_year).map(rowOf),
    x: vendors.filter((v) => v.platform_year).map((v) => v.platform_year + 0.5),
    marker: { symbol: "diamond", size: 10, color: "#f39c12" },
    hovertext: vendors.filter((v) => v.platform_year).map((v) => `${v.platform} released ${v.platform_year}`),
    hoverinfo: "text",
    name: "platform released",
  }, {
    type: "scatter",
    mode: "markers+text",
    y: timeline.milestones.map(() => "milestones"),
    x: timeline.milestones.map((m) => m.year + 0.5),
    marker: { symbol: "star", size: 12, color: "#c0392b" },
    text: timeline.milestones.map((m) => String(m.year)),
    textposition: timeline.milestones.map((_, i) => (i % 2 ? "bottom center" : "top center")),
    hovertext: timeline.milestones.map((m) => `${m.year}: ${m.event}<br>${m.note}`),
    hoverinfo: "text",
    name: "milestones 1986–2012",
  }];
  const lastYear = new Date().getFullYear();
  const annotations = rows.filter((r) => r !== "milestones").map((row) => {
    const devices = measured[row.toLowerCase()] || [];
    // In the right margin (paper coordinates), so the year axis ends at this year instead of
    // stretching decades past it to make room for the text.
    return {
      xref: "paper", x: 1.01, y: row, xanchor: "left", showarrow: false, align: "left", font: { size: 10 },
      text: devices.length
        ? devices.map((d) => `<b>${d.name}</b> (${deviceStack(d)}): ${best[d.id] ? best[d.id].text : "no result yet"}`).join("<br>")
        : "<i>not measured here</i>",
    };
  });
  // The right margin holds the device notes: as wide as the longest line (about 6.5 px a character at 10 px).
  const longest = Math.max(20, ...annotations.flatMap((a) => a.text.split("<br>").map((line) => line.replace(/<[^>]+>/g, "").length)));
  plot("timeline-chart", traces, {
    title: { text: "years each vendor entered deep learning · milestones · measured devices (best figure)" },
    barmode: "overlay",
    xaxis: { range: [1984, lastYear + 2], dtick: 4, title: { text: "year" } },
    yaxis: { categoryorder: "array", categoryarray: [...rows, "milestones"], automargin: true },
    annotations,
    shapes: [{ type: "line", x0: lastYear + 0.5, x1: lastYear + 0.5, yref: "paper", y0: 0, y1: 1, line: { dash: "dot", color: "#999" } }],
    showlegend: true,
    legend: { orientation: "h", y: -0.15 },
    margin: { l: 90, r: Math.ceil(24 + 6.5 * longest), t: 40, b: 80 },
    height: 140 + 48 * (rows.length + 1),
  });

  const list = $("timeline-list");
  list.replaceChildren();
  for (const vendor of vendors) {
    const devices = measured[vendor.vendor.toLowerCase()] || [];
    list.append(el("div", { class: "vendor", "data-vendor": vendor.vendor },
      el("h3", {}, `${vendor.vendor} · ${vendor.platform} · ${vendor.years}`),
      el("p", { class: "muted" }, vendor.note),
      devices.length
        ? el("ul", {}, ...devices.map((d) => el("li", { "data-device-id": d.id },
          `${d.name} (${deviceStack(d)}, ${d.id})${d.live ? " · live" : ""}: `,
          el("strong", {}, best[d.id] ? best[d.id].text : "no result yet"))))
        : el("p", { class: "muted" }, "not measured here")));
  }
  if (measured.other) {
    list.append(el("div", { class: "vendor", "data-vendor": "other" }, el("h3", {}, "other vendors"),
      el("ul", {}, ...measured.other.map((d) => el("li", { "data-device-id": d.id },
        `${d.name} (${d.vendor}, ${deviceStack(d)}, ${d.id}): `, el("strong", {}, best[d.id] ? best[d.id].text : "no result yet"))))));
  }
  list.append(el("div", { class: "vendor milestones" }, el("h3", {}, "Milestones"),
    el("ul", {}, ...timeline.milestones.map((m) => el("li", {}, el("strong", {}, `${m.year} `), m.event)))));
  $("timeline-source").textContent = `source: ${timeline.source}`;
}

// --- jobs ------------------------------------------------------------------------------------------------

function durationOf(job) {
  if (job.duration_s !== null && job.duration_s !== undefined) return job.duration_s;
  if (job.started_at && !FINAL.has(job.status)) return (Date.now() - new Date(job.started_at)) / 1000;
  return null;
}

// A job's stack, as the compare table writes it: the stack of the device that ran it, else the backends
// its device's spelling may run on (`numpy` for cpu, `xla` for xla:cpu:0, `cuda or rocm` for gpu).
function jobStack(job) {
  const device = job.device_id && state.devices[job.device_id];
  if (device) return deviceStack(device);
  return (job.backends || []).join(" or ") || "–";
}

const JOBS_PER_PAGE = 25;

function jobsQuery() {
  const form = $("jobs-filters").elements;
  return { status: form.status.value, kind: form.kind.value, device: form.device.value, limit: JOBS_PER_PAGE, offset: state.jobsOffset };
}

async function loadJobs() {
  const seq = ++state.jobsSeq;
  const asked = query(jobsQuery());
  const page = await api(`/api/v1/jobs${asked}`);
  if (seq !== state.jobsSeq) return;  // a newer filter, page or poll was asked for meanwhile
  if (!page.items.length && state.jobsOffset > 0 && page.total > 0) {
    // The page emptied (its jobs filtered away): go to the last page that has rows.
    state.jobsOffset = Math.floor((page.total - 1) / JOBS_PER_PAGE) * JOBS_PER_PAGE;
    return loadJobs();
  }
  const body = $("jobs-table").tBodies[0];
  body.replaceChildren();
  for (const job of page.items) {
    const percent = Math.round(100 * job.progress);
    body.append(el("tr", { "data-job-id": job.id, "data-status": job.status },
      el("td", {}, el("a", { href: `#/job/${job.id}` }, job.id.slice(0, 8)),
        job.suite_item ? el("span", { class: "muted" }, ` ${job.suite_item}`) : null),
      el("td", {}, job.kind),
      el("td", {}, el("span", { class: `status ${job.status}` }, job.status)),
      el("td", { title: job.progress_message || "" },
        el("progress", { max: "100", value: String(percent) }), ` ${percent}%`),
      el("td", {}, job.device_id ? deviceLabel(job.device_id) : job.device),
      el("td", { class: "stack" }, jobStack(job)),
      el("td", {}, job.worker || "–"),
      el("td", { class: "num" }, fmtSeconds(durationOf(job))),
      el("td", {}, fmtTime(job.created_at))));
  }
  const total = `${page.total}${page.total_exact === false ? "+" : ""}`;
  const first = page.items.length ? state.jobsOffset + 1 : 0;
  const last = state.jobsOffset + page.items.length;
  $("jobs-range").textContent = `${first}–${last} of ${total}`;
  $("jobs-previous").disabled = state.jobsOffset === 0;
  $("jobs-next").disabled = last >= page.total && page.total_exact !== false;
  $("jobs-updated").textContent = `${total} in all · updated ${new Date().toLocaleTimeString("en-GB")}`;
  $("jobs-table").dataset.query = asked;  // what the rows show: tests wait on it, not on time
}

function setupJobsFilters() {
  const form = $("jobs-filters").elements;
  for (const option of $("submit-form").elements.kind.options) form.kind.append(el("option", {}, option.value));
  for (const d of Object.values(state.devices)) form.device.append(el("option", { value: d.id }, `${d.name} (${d.id})`));
  const reload = () => loadJobs().catch(showError);
  $("jobs-filters").addEventListener("change", () => {
    state.jobsOffset = 0;
    reload();
  });
  $("jobs-previous").addEventListener("click", () => {
    state.jobsOffset = Math.max(0, state.jobsOffset - JOBS_PER_PAGE);
    reload();
  });
  $("jobs-next").addEventListener("click", () => {
    state.jobsOffset += JOBS_PER_PAGE;
    reload();
  });
}

function startJobsPolling() {
  clearInterval(state.jobsTimer);
  state.jobsTimer = setInterval(() => loadJobs().catch(showError), POLL_MS);
}

// --- job page --------------------------------------------------------------------------------------------

// The job's log: only the lines after the last one shown are asked for (`?after=`), and appended.
async function loadJobLog(jobId, seq) {
  if (state.jobLog.jobId !== jobId) {
    state.jobLog = { jobId, after: 0 };
    $("job-log").tBodies[0].replaceChildren();
  }
  const page = await api(`/api/v1/jobs/${encodeURIComponent(jobId)}/logs${query({ after: state.jobLog.after })}`);
  if (seq !== state.jobSeq || state.jobLog.jobId !== jobId || (page.items.length && page.items[0].seq <= state.jobLog.after)) {
    return page.complete;  // another page was opened, or these lines are shown already
  }
  const body = $("job-log").tBodies[0];
  for (const row of body.querySelectorAll("tr.empty-log")) row.remove();
  for (const line of page.items) {
    body.append(el("tr", { "data-seq": String(line.seq), "data-attempt": String(line.attempt), "data-level": line.level },
      el("td", { class: "time" }, fmtTime(line.time)),
      el("td", { class: "num attempt" }, `#${line.attempt}`),
      el("td", { class: "level" }, line.level),
      el("td", { class: "message", title: line.logger }, line.message)));
  }
  state.jobLog.after = page.last_seq;
  const count = body.rows.length;
  $("job-log-state").textContent = page.complete
    ? `${count} line(s)`
    : `${count} line(s) so far · updated ${new Date().toLocaleTimeString("en-GB")}`;
  if (!count) body.append(el("tr", { class: "empty-log" }, el("td", { colspan: "4", class: "muted" }, "no line logged yet")));
  return page.complete;
}

function drawLoss(curve, title, kind) {
  plot("loss-chart", [{ type: "scatter", mode: "lines", x: curve.map((p) => p[0]), y: curve.map((p) => p[1]), name: "loss" }], {
    title: { text: title }, xaxis: { title: { text: "step" } }, yaxis: { title: { text: "loss" } },
  });
  $("loss-chart").dataset.curve = kind;
}

// While a train job runs its worker stores the loss it reports; the final curve replaces it with the result.
async function loadPartialLoss(job, seq) {
  const curve = await api(`/api/v1/jobs/${encodeURIComponent(job.id)}/loss-curve`);
  if (seq !== state.jobSeq) return;
  if (curve.points.length) {
    const last = curve.points[curve.points.length - 1];
    const of = curve.total_steps ? ` of ${curve.total_steps}` : "";
    drawLoss(curve.points, `training loss so far (attempt ${curve.attempt}, step ${last[0]}${of})`, "partial");
  } else {
    emptyChart("loss-chart", job.status === "queued" ? "the loss curve appears once the job runs" : "no loss reported yet");
    $("loss-chart").dataset.curve = "none";
  }
}

async function loadJobPage(jobId) {
  const seq = ++state.jobSeq;
  const doc = await api(`/api/v1/jobs/${encodeURIComponent(jobId)}/report`);
  if (seq !== state.jobSeq) return;  // another job page was opened meanwhile
  const job = doc.job;
  $("job-id").textContent = job.id;
  const status = $("job-status");
  status.textContent = job.status;
  status.className = `status ${job.status}`;
  const cancel = $("job-cancel");
  cancel.hidden = FINAL.has(job.status) || !(state.session && state.session.can_submit);
  cancel.disabled = false;
  cancel.onclick = async () => {
    cancel.disabled = true;  // one request per click; the page's next load shows the outcome
    try {
      await api(`/api/v1/jobs/${encodeURIComponent(job.id)}/cancel`, { method: "POST" });
      await loadJobPage(job.id);
    } catch (error) {
      cancel.disabled = false;
      showError(error);
    }
  };
  const facts = [
    ["kind", job.kind], ["progress", `${Math.round(100 * job.progress)}% ${job.progress_message || ""}`],
    ["device", job.device_id ? deviceLabel(job.device_id) : job.device], ["worker", job.worker || "–"],
    ["attempts", job.attempts], ["created", fmtTime(job.created_at)], ["started", fmtTime(job.started_at)],
    ["finished", fmtTime(job.finished_at)], ["duration", fmtSeconds(durationOf(job))], ["spec hash", job.spec_hash],
  ];
  if (doc.result && doc.result.samples_per_s !== null) {
    const ci = doc.result.samples_per_s_ci95;
    facts.push(["samples/s", `${fmt(doc.result.samples_per_s, 4)} (95% CI ${fmt(ci[0])} – ${fmt(ci[1])})`]);
  }
  $("job-facts").replaceChildren(...facts.map(([k, v]) => el("tr", {}, el("th", {}, k), el("td", {}, v))));
  $("job-error").hidden = !job.error;
  $("job-error").textContent = job.error || "";
  $("job-spec").textContent = JSON.stringify(job.spec, null, 2);
  const result = doc.result;
  $("job-fingerprint").textContent = result ? JSON.stringify(result.fingerprint, null, 2) : "no result (yet)";
  $("job-metrics").textContent = result ? JSON.stringify(result.metrics, null, 2) : "";
  const verdict = result && result.regression;
  $("job-regression").replaceChildren(verdict
    ? el("p", {}, flagBadge(verdict) || el("span", { class: "badge" }, "within noise"), ` ${verdict.reason}`)
    : "");
  const curve = result && result.metrics && result.metrics.loss_curve;
  if (curve && curve.length) {
    drawLoss(curve, "training loss", "final");
  } else if (!result && job.kind === "train") {
    await loadPartialLoss(job, seq);
    if (seq !== state.jobSeq) return;
  } else {
    emptyChart("loss-chart", result ? `no loss curve for a ${job.kind} job` : "the loss curve appears when the job succeeds");
    $("loss-chart").dataset.curve = "none";
  }
  const series = result ? Object.entries(result.trials) : [];
  if (series.length) {
    const axis = TRIAL_AXES[job.kind] || { title: "value", scale: 1, name: (n) => n };
    plot("trials-chart", series.map(([name, values]) => ({
      type: "box", name: axis.name(name), y: values.map((v) => v / axis.scale), boxpoints: "all", jitter: 0.4, pointpos: 0,
    })), {
      title: { text: "distribution of the trials" }, showlegend: false,
      yaxis: { title: { text: axis.title }, type: series.length > 3 ? "log" : "linear", exponentformat: "none" },
    });
  } else {
    emptyChart("trials-chart", result ? "no timing trials for this kind" : "trials appear when the job succeeds");
  }
  const logComplete = await loadJobLog(job.id, seq);
  if (seq !== state.jobSeq) return;
  clearTimeout(state.jobTimer);
  // Polled until the job has ended and its last log lines are in (they are written just after its outcome).
  if ((!FINAL.has(job.status) || !logComplete) && location.hash === `#/job/${jobId}`) {
    state.jobTimer = setTimeout(() => loadJobPage(jobId).catch(showError), POLL_MS);
  }
  $("job-page").dataset.jobId = job.id;
}

// --- submit ----------------------------------------------------------------------------------------------

function jobBody(form) {
  const f = Object.fromEntries(new FormData(form).entries());
  const body = { kind: f.kind, device: f.device, dtype: f.dtype };
  if (f.kind === "gemm") return body;
  body.model = { name: f.model };
  if (f.layers.trim()) body.model.layers = f.layers.split(",").map((s) => Number(s.trim()));
  if (f.kind === "train") {
    Object.assign(body, { dataset: f.dataset, steps: Number(f.steps), batch_size: Number(f.batch_size) });
    body.optimizer = { name: "sgd", lr: Number(f.lr) };
  }
  return body;
}

// The job kinds are the engine's: the API's schema lists them (the job submission's `kind`), so a new kind
// appears here without an edit.
async function loadJobKinds() {
  const schema = await api("/openapi.json");
  const submission = Object.values(schema.components.schemas).find((s) => s.properties && s.properties.kind && s.properties.kind.enum);
  const kinds = submission ? submission.properties.kind.enum : ["train"];
  for (const select of document.querySelectorAll("select[data-job-kinds]")) {
    const chosen = select.value;
    select.replaceChildren(...kinds.map((kind) => el("option", kind === chosen ? { selected: "selected" } : {}, kind)));
  }
}

function setupSubmit() {
  const allowed = state.session && state.session.can_submit;
  $("submit-disabled").hidden = allowed;
  for (const button of [$("submit-job"), $("submit-suite")]) button.disabled = !allowed;
  const out = $("submit-result");
  $("submit-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    out.className = "";
    try {
      const job = await api("/api/v1/jobs", { method: "POST", body: jobBody(event.target) });
      out.replaceChildren("Job ", el("a", { href: `#/job/${job.id}`, id: "submitted-job", "data-job-id": job.id }, job.id),
        ` ${job.status} on queue ${job.queue}.`);
      loadJobs().catch(showError);
    } catch (error) {
      out.className = "error";
      out.textContent = `Refused: ${error.message}`;
    }
  });
  $("suite-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    out.className = "";
    try {
      const name = new FormData(event.target).get("name");
      const doc = await api("/api/v1/suites", { method: "POST", body: { name } });
      out.textContent = `Suite ${doc.suite}: ${doc.jobs.length} jobs on ${doc.targets.join(", ")}.`;
      loadJobs().catch(showError);
    } catch (error) {
      out.className = "error";
      out.textContent = `Refused: ${error.message}`;
    }
  });
}

// --- backprop vs numerical -------------------------------------------------------------------------------

async function loadBvn() {
  const page = await api("/api/v1/results?kind=backprop_vs_numerical&limit=50");
  const newest = {};
  for (const r of page.items) if (!newest[r.device_id]) newest[r.device_id] = r; // newest first
  const results = Object.values(newest);
  if (!results.length) {
    emptyChart("bvn-chart", "No backprop_vs_numerical result yet (it is part of the standard suite).");
    return;
  }
  const traces = [];
  for (const r of results) {
    const sizes = r.metrics.sizes || [];
    const label = deviceLabel(r.device_id, r.device_name);
    const x = sizes.map((s) => s.parameters);
    const widths = sizes.map((s) => `width ${s.width}, ratio ×${fmt(s.time_ratio)}`);
    traces.push({ type: "scatter", mode: "lines+markers", x, y: sizes.map((s) => s.backprop_s), name: `backprop · ${label}`, text: widths,
      hovertemplate: "%{x} parameters<br>%{y:.3s} s per gradient<br>%{text}<extra>backprop</extra>" });
    traces.push({ type: "scatter", mode: "lines+markers", x, y: sizes.map((s) => s.numerical_s), name: `numerical · ${label}`, text: widths,
      line: { dash: "dash" }, hovertemplate: "%{x} parameters<br>%{y:.3s} s per gradient<br>%{text}<extra>numerical</extra>" });
  }
  plot("bvn-chart", traces, {
    title: { text: "seconds for one full gradient: backprop grows like one pass, numerical like 2 passes per parameter" },
    xaxis: { type: "log", title: { text: "parameters" } },
    yaxis: { type: "log", dtick: 1, exponentformat: "power", title: { text: "seconds per gradient" } },
    legend: { orientation: "h", y: -0.25 },
    margin: { l: 70, r: 20, t: 40, b: 100 },
  });
  const last = results[0].metrics.sizes || [];
  const top = last[last.length - 1];
  $("bvn-note").textContent = top
    ? `At ${top.parameters} parameters numerical differentiation took ×${fmt(top.time_ratio)} the time of backprop ` +
      `(${top.numerical_forward_evaluations} forward passes against 1 forward + 1 backward).`
    : "";
}

// --- regressions -----------------------------------------------------------------------------------------

async function loadRegressions() {
  const doc = await api("/api/v1/regressions?scope=all");
  const rule = doc.rule;
  $("regressions-rule").textContent =
    `Each result is compared with up to ${rule.history_window} earlier results of the same device and spec ` +
    `(at least ${rule.min_history}); flagged when the median moved by at least ${rule.min_change_pct}%, by at ` +
    `least ${rule.z_threshold} spreads (the larger of the run-to-run and the within-run scatter, at least ` +
    `${rule.spread_floor_pct}%), and the Mann-Whitney p-value of the trials is under ${rule.alpha}.`;
  const table = $("regressions-table");
  if (!doc.items.length) {
    table.replaceChildren(el("tbody", {}, el("tr", {}, el("td", { class: "muted" }, "Nothing flagged: every result is within the noise of its history."))));
    return;
  }
  table.replaceChildren(el("thead", {}, el("tr", {}, ...["when", "device", "spec", "flag", "samples/s", "history median", "z", "p", "job"].map((h) => el("th", {}, h)))));
  const body = el("tbody");
  for (const v of doc.items) {
    body.append(el("tr", { "data-result-id": v.result_id, "data-flag": v.flag },
      el("td", {}, fmtTime(v.created_at)), el("td", {}, deviceLabel(v.device_id, v.device_name)),
      el("td", {}, `${v.spec_hash} ${v.model || v.kind} b${v.batch_size}`), el("td", {}, flagBadge(v)),
      el("td", { class: "num" }, fmt(v.samples_per_s, 4)), el("td", { class: "num" }, fmt(v.baseline_samples_per_s, 4)),
      el("td", { class: "num" }, v.z.toFixed(1)), el("td", { class: "num" }, v.p_value.toExponential(1)),
      el("td", {}, el("a", { href: `#/job/${v.job_id}` }, v.job_id.slice(0, 8)))));
  }
  table.append(body);
}

// --- page ------------------------------------------------------------------------------------------------

function showError(error) {
  if (error instanceof ApiError && error.status === 401) {
    $("signin").hidden = false;
    return;
  }
  const box = el("p", { class: "error floating" }, String(error.message || error));
  document.body.append(box);
  setTimeout(() => box.remove(), 6000);
}

async function loadDevices() {
  const page = await api("/api/v1/devices");
  state.devices = Object.fromEntries(page.items.map((d) => [d.id, d]));
  renderDevices(page.items);
}

function gib(bytes) {
  return bytes === null || bytes === undefined ? "–" : `${(bytes / 2 ** 30).toFixed(1)} GiB`;
}

// The device list: what each device is, what drives it, who serves it now and what waits for it.
function renderDevices(devices) {
  const body = $("devices-table").tBodies[0];
  body.replaceChildren();
  for (const d of devices) {
    const live = d.workers.filter((w) => w.live).map((w) => w.name);
    const software = Object.entries(d.software || {}).filter(([, v]) => v !== null && v !== "")
      .map(([k, v]) => `${k} ${typeof v === "object" ? JSON.stringify(v) : v}`).join(" · ");
    body.append(el("tr", { "data-device-id": d.id, "data-live": String(d.live) },
      el("td", {}, el("strong", {}, d.name), el("br"), el("code", {}, d.id)),
      el("td", {}, d.device_class),
      el("td", {}, d.vendor),
      el("td", { class: "memory" }, gib(d.memory_bytes)),
      el("td", { class: "software small" }, software || "–"),
      el("td", { class: "workers" }, live.length ? `${live.length}: ${live.join(", ")}` : "none"),
      el("td", { class: "queued" }, String(d.queued_jobs)),
      // Whether a float64 job can run here: one aimed only at devices without it is refused at submission.
      el("td", { class: "float64" }, d.float64 === true ? "yes" : d.float64 === false ? "no" : "–")));
  }
  if (!devices.length) body.append(el("tr", {}, el("td", { colspan: "8", class: "muted" }, "no device registered yet: start a worker")));
}

async function route() {
  const match = location.hash.match(/^#\/job\/([0-9a-f-]{36})$/);
  clearTimeout(state.jobTimer);
  state.jobSeq += 1;  // a job page still loading must not draw over the page opened now
  if (!state.session || !state.session.can_read) return;
  $("overview").hidden = Boolean(match);
  $("job-page").hidden = !match;
  if (match) {
    await loadJobPage(match[1]);
    window.scrollTo(0, 0);
  } else if (location.hash && location.hash.length > 1 && !location.hash.startsWith("#/")) {
    const target = document.querySelector(location.hash);
    if (target) target.scrollIntoView();
  }
}

async function main() {
  // The link `bpbench up` prints points at wherever this page is served from, not a fixed port.
  $("signin-example").textContent = `${location.origin}/?token=…`;
  const session = await loadSession();
  if (!session.can_read) return;
  $("overview").hidden = false;
  setupSubmit();
  await loadJobKinds().catch(showError);
  await loadDevices();
  setupJobsFilters();
  $("compare-filters").addEventListener("change", (event) => {
    if (event.target.name !== "spec_hash" && event.target.name !== "baseline") {
      $("compare-filters").elements.spec_hash.value = "";
      $("compare-filters").elements.baseline.value = "";
    }
    loadCompare().catch(showError);
  });
  await Promise.all([loadJobs(), loadCompare(), loadTimeline(), loadBvn(), loadRegressions()].map((p) => p.catch(showError)));
  startJobsPolling();
  window.addEventListener("hashchange", () => route().catch(showError));
  await route();
  document.body.dataset.ready = "true";
}

main().catch(showError);
