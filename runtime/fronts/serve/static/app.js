// attnmap serve: the page's controls change the live loop's state (POST /v1/stream/state);
// the stream itself is the <img>'s MJPEG. Same-origin requests carry the auth cookie.
"use strict";

const $ = (id) => document.getElementById(id);
const selects = ["method", "layer", "head", "head_fusion", "colormap", "fit"];
let lastState = null;

function fill(select, values, current, labelOf) {
  const want = values.map(String).join("|");
  if (select.dataset.values !== want) {
    select.textContent = "";
    for (const v of values) {
      const opt = document.createElement("option");
      opt.value = v === null ? "" : String(v);
      opt.textContent = labelOf ? labelOf(v) : String(v);
      select.appendChild(opt);
    }
    select.dataset.values = want;
  }
  if (document.activeElement !== select) select.value = current === null ? "" : String(current);
}

function range(n) { return Array.from({ length: n }, (_, i) => i); }

function render(data) {
  const s = data.state, st = data.status;
  lastState = s;
  fill($("method"), s.methods, s.method);
  $("layer").disabled = !s.layer_option;
  fill($("layer"), [null, ...range(s.num_layers)], s.layer, (v) => v === null ? "default" : String(v));
  $("head").disabled = !s.has_head;
  fill($("head"), [null, ...range(s.num_heads)], s.head, (v) => v === null ? "fused" : String(v));
  $("head_fusion").disabled = s.head_fusions.length === 0;
  fill($("head_fusion"), [null, ...s.head_fusions], s.head_fusion, (v) => v === null ? "default" : v);
  fill($("colormap"), s.colormaps.includes(s.colormap) ? s.colormaps : [s.colormap, ...s.colormaps], s.colormap);
  fill($("fit"), s.fits, s.fit);
  if (document.activeElement !== $("smooth")) $("smooth").value = s.smooth;
  $("smooth_value").textContent = Number(s.smooth).toFixed(2);
  $("pause").textContent = s.paused ? "Resume" : "Pause";
  document.body.dataset.method = s.method;
  document.body.dataset.version = String(st.version);
  $("fps").textContent = st.fps.toFixed(1);
  $("latency").textContent = st.latency_ms === null ? "-" : st.latency_ms.toFixed(0);
  $("dropped").textContent = String(st.frames_dropped);
  $("source").textContent = st.source;
  const ol = $("topk");
  ol.textContent = "";
  for (const t of st.topk) {
    const li = document.createElement("li");
    li.textContent = `${t.label} ${(t.prob * 100).toFixed(1)}%`;
    ol.appendChild(li);
  }
  const health = $("health");
  health.textContent = st.running ? "live" : (st.ended || "starting");
  health.className = "badge " + (st.ended === "error" ? "bad" : st.running ? "ok" : "");
  $("message").textContent = st.error ? `stream stopped: ${st.error}` : "";
}

async function call(method, body) {
  const res = await fetch("/v1/stream/state", {
    method, headers: body ? { "Content-Type": "application/json" } : {},
    body: body ? JSON.stringify(body) : undefined, credentials: "same-origin",
  });
  const data = await res.json();
  if (!res.ok) throw new Error(data.error || `HTTP ${res.status}`);
  return data;
}

async function change(fields) {
  try {
    render(await call("POST", fields));
  } catch (err) {
    $("message").textContent = err.message;
  }
}

async function poll() {
  try {
    render(await call("GET"));
  } catch (err) {
    if (String(err.message).includes("API only")) {
      $("stream").hidden = true;
      $("nostream").hidden = false;
      $("controls").hidden = true;
      return;
    }
    $("message").textContent = err.message;
  }
  setTimeout(poll, 500);
}

for (const name of selects) {
  $(name).addEventListener("change", (ev) => {
    const raw = ev.target.value;
    let value = raw;
    if (["layer", "head"].includes(name)) value = raw === "" ? null : Number(raw);
    if (name === "head_fusion" && raw === "") value = null;
    change({ [name]: value });
  });
}
$("smooth").addEventListener("change", (ev) => change({ smooth: Number(ev.target.value) }));
$("pause").addEventListener("click", () => change({ paused: !(lastState && lastState.paused) }));
poll();
