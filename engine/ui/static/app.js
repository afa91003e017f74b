// The endpoint page's metrics charts (uPlot), drawn from the JSON the page carries; the rest
// of the pages' interactions are HTMX attributes, except the playground's streams below.
(function () {
  "use strict";
  var COLOURS = { rps: "#2563eb", p50: "#16a34a", p99: "#dc2626", errors: "#b91c1c", tokens: "#7c3aed" };
  function draw() {
    var data = document.getElementById("metrics-data");
    if (!data || typeof uPlot === "undefined") return;
    var series = JSON.parse(data.textContent);
    document.querySelectorAll(".chart[data-series]").forEach(function (el) {
      if (el.dataset.drawn) return;
      el.dataset.drawn = "1";
      var names = el.dataset.series.split(",");
      var opts = {
        width: Math.max(240, el.clientWidth), height: 160,
        legend: { show: names.length > 1 },
        series: [{}].concat(names.map(function (n) { return { label: n, stroke: COLOURS[n], width: 2 }; })),
        axes: [{}, { size: 50 }],
      };
      new uPlot(opts, [series.x].concat(names.map(function (n) { return series[n]; })), el);
    });
  }
  document.addEventListener("DOMContentLoaded", draw);
})();

// The playground: with script, each picked endpoint's answer streams into its own column as it
// arrives (POST /ml/playground/stream, one fetch per endpoint, read as server-sent events);
// latency and token counts show at the end. Without script the form posts and the page shows
// every answer at once. A new prompt, or leaving the page, aborts the answers still streaming:
// the server then stops them upstream too.
(function () {
  "use strict";
  var inFlight = null;  // the AbortController of the answers on the page
  function abortAll() {
    if (inFlight) inFlight.abort();
    inFlight = null;
  }
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text) e.textContent = text;
    return e;
  }
  function column(name) {
    var card = el("section", "card answer streaming");
    card.dataset.endpoint = name;
    card.appendChild(el("h2", "", name));
    var text = el("p", "answer-text");
    var meta = el("p", "muted small answer-meta", "waiting for the first token…");
    card.appendChild(text);
    card.appendChild(meta);
    return { card: card, text: text, meta: meta };
  }
  function finish(col, data) {
    col.card.classList.remove("streaming");
    if (data.error) {
      col.card.classList.add("failed");
      col.meta.textContent = data.error;
      return;
    }
    var u = data.usage || {};
    var line = data.ms + " ms · first token " + data.first_ms + " ms";
    if (u.prompt_tokens !== undefined || u.completion_tokens !== undefined) {
      line += " · " + (u.prompt_tokens || 0) + " prompt + " + (u.completion_tokens || 0) + " completion tokens";
    }
    col.meta.textContent = line;
    col.card.classList.add("done");
  }
  function handle(col, raw) {
    var data;
    try { data = JSON.parse(raw); } catch (e) { return; }
    if (data.delta !== undefined) {
      col.text.textContent += data.delta;
      col.meta.textContent = "streaming…";
    } else if (data.done || data.error) {
      finish(col, data);
    }
  }
  function ask(form, name, col, signal) {
    var body = new URLSearchParams();
    new FormData(form).forEach(function (v, k) { if (k !== "endpoint") body.append(k, v); });
    body.append("endpoint", name);
    fetch("/ml/playground/stream", { method: "POST", body: body, credentials: "same-origin", signal: signal })
      .then(function (response) {
        var kind = response.headers.get("content-type") || "";
        if (!response.ok || kind.indexOf("text/event-stream") !== 0) {
          return response.text().then(function (t) {
            var message = response.status + ": ";
            try { message += JSON.parse(t).message; } catch (e) { message += "signed out? reload the page"; }
            finish(col, { error: message });
          });
        }
        var reader = response.body.getReader();
        var decoder = new TextDecoder();
        var buffer = "";
        function pump() {
          return reader.read().then(function (step) {
            if (step.done) {
              if (col.card.classList.contains("streaming")) finish(col, { error: "the answer ended early" });
              return;
            }
            buffer += decoder.decode(step.value, { stream: true });
            var frames = buffer.split("\n\n");
            buffer = frames.pop();
            frames.forEach(function (frame) {
              frame.split("\n").forEach(function (line) {
                if (line.indexOf("data:") === 0) handle(col, line.slice(5).trim());
              });
            });
            return pump();
          });
        }
        return pump();
      })
      .catch(function (err) {
        if (signal && signal.aborted) return;  // replaced or left: nobody reads this column
        finish(col, { error: "no answer: " + err });
      });
  }
  function start() {
    var form = document.getElementById("playground");
    if (!form || !window.fetch || !window.ReadableStream || !window.TextDecoder) return;
    form.addEventListener("submit", function (ev) {
      var picked = Array.prototype.map.call(
        form.querySelectorAll("input[name=endpoint]:checked"), function (e) { return e.value; });
      if (!picked.length) return;  // the server names the missing field
      ev.preventDefault();
      abortAll();
      inFlight = window.AbortController ? new AbortController() : null;
      var signal = inFlight ? inFlight.signal : undefined;
      var old = document.getElementById("answers");
      var answers = el("div", "answers");
      answers.id = "answers";
      if (old) old.replaceWith(answers); else form.after(answers);
      var alert = document.getElementById("playground-error");
      if (alert) alert.remove();
      picked.forEach(function (name) {
        var col = column(name);
        answers.appendChild(col.card);
        ask(form, name, col, signal);
      });
    });
    window.addEventListener("pagehide", abortAll);
  }
  document.addEventListener("DOMContentLoaded", start);
})();

// Seed 001's throughput controls: the summary of the minimum ("Minimum: N tokens/s · Change")
// follows the pick under it.
document.addEventListener("change", function (ev) {
  var t = ev.target;
  if (!t.name || !/_pt_min$/.test(t.name)) return;
  var summary = t.closest("details") && t.closest("details").querySelector("summary");
  if (summary) summary.textContent = "Minimum: " + t.value + " tokens/s · Change";
});
