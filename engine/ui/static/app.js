// The endpoint page's metrics charts (uPlot), drawn from the JSON the page carries. No other
// script runs here; interactions are HTMX attributes.
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
