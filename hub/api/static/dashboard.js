/* Connect Hub dashboard: polls the dashboard's JSON and redraws the live parts of the page.
   Builds every element with textContent (never innerHTML): data is shown, not interpreted. */
(function () {
  "use strict";
  var body = document.body;
  var refreshMs = parseInt(body.dataset.refreshMs, 10) || 5000;
  var GOOD = ["delivered", "answered", "sent", "read"];
  var BAD = ["permanent_failure", "failed", "rejected", "invalid", "suppressed", "error"];

  function color(outcome) {
    if (GOOD.indexOf(outcome) >= 0) { return "#2e7d32"; }
    if (BAD.indexOf(outcome) >= 0) { return "#c62828"; }
    if (outcome === "busy" || outcome === "no_answer") { return "#ef6c00"; }
    return "#1565c0";
  }

  function el(name, text, attrs) {
    var node = document.createElement(name);
    if (text !== undefined && text !== null) { node.textContent = String(text); }
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    return node;
  }

  function row(cells, attrs) {
    var tr = el("tr", null, attrs);
    cells.forEach(function (c) { tr.appendChild(c instanceof Node ? c : el("td", c)); });
    return tr;
  }

  function countsText(counts) {
    var keys = Object.keys(counts).sort();
    return keys.length ? keys.map(function (k) { return k + " " + counts[k]; }).join(", ") : "—";
  }

  function setText(id, value) {
    var node = document.getElementById(id);
    if (node) { node.textContent = String(value); }
  }

  function getJSON(url) {
    return fetch(url, { credentials: "same-origin", cache: "no-store" }).then(function (r) {
      if (r.status === 401) { window.location.assign("/dashboard/login"); }
      if (!r.ok) { throw new Error(url + ": " + r.status); }
      return r.json();
    });
  }

  function every(ms, fn) {
    var tick = function () {
      fn().catch(function (err) { body.dataset.refreshError = String(err); })
        .then(function () { window.setTimeout(tick, ms); });
    };
    tick();
  }

  function progressCell(pct) {
    var td = el("td");
    td.appendChild(el("progress", pct + "%", { value: String(pct), max: "100" }));
    td.appendChild(document.createTextNode(" "));
    td.appendChild(el("span", pct + "%", { "class": "pct" }));
    return td;
  }

  function sessionsPage() {
    var params = new URLSearchParams(body.dataset.query || "");
    var list = new URLSearchParams();
    ["status", "transport", "cursor"].forEach(function (k) {
      if (params.get(k)) { list.set(k, params.get(k)); }
    });
    var range = new URLSearchParams();
    ["from", "to"].forEach(function (k) { if (params.get(k)) { range.set(k, params.get(k)); } });
    var usageColumns = ["date", "transport", "sessions", "recipients", "attempts", "delivered",
      "failed", "smsSegments", "callsAnswered", "billableSeconds", "inboundCallbacks"];

    every(refreshMs, function () {
      return Promise.all([
        getJSON("/dashboard/api/sessions?" + list.toString()),
        getJSON("/dashboard/api/usage?" + range.toString())
      ]).then(function (got) {
        var rows = got[0].items.map(function (s) {
          var link = el("td");
          link.appendChild(el("a", s.id, { href: "/dashboard/sessions/" + s.id }));
          return row([link, s.xref || "", s.transport,
            el("td", s.status, { "class": "status " + s.status }), countsText(s.counts),
            progressCell(s.percentDone), s.createdAt], { "data-session": s.id });
        });
        if (!rows.length) { rows = [row([el("td", "No sessions.", { colspan: "7" })])]; }
        document.querySelector("#sessions tbody").replaceChildren.apply(
          document.querySelector("#sessions tbody"), rows);
        var usage = got[1].items.map(function (u) {
          return row(usageColumns.map(function (k) { return u[k]; }));
        });
        if (!usage.length) {
          usage = [row([el("td", "No usage in this range.", { colspan: String(usageColumns.length) })])];
        }
        document.querySelector("#usage tbody").replaceChildren.apply(
          document.querySelector("#usage tbody"), usage);
        body.dataset.refreshed = String(Date.now());
      });
    });
  }

  function sessionPage() {
    var id = body.dataset.session;
    var canvas = document.getElementById("outcomes");
    var chart = null;

    function draw(report) {
      var labels = Object.keys(report.byOutcome);
      var values = labels.map(function (k) { return report.byOutcome[k]; });
      document.getElementById("no-outcomes").classList.toggle("hidden", labels.length > 0);
      if (chart === null) {
        chart = new window.Chart(canvas, {
          type: "bar",
          data: { labels: labels, datasets: [{ label: "attempts", data: values,
            backgroundColor: labels.map(color) }] },
          options: { animation: false, responsive: false,
            plugins: { legend: { display: false } },
            scales: { y: { beginAtZero: true, ticks: { precision: 0 } } } }
        });
      } else {
        chart.data.labels = labels;
        chart.data.datasets[0].data = values;
        chart.data.datasets[0].backgroundColor = labels.map(color);
        chart.update();
      }
      canvas.dataset.rendered = String(values.reduce(function (a, b) { return a + b; }, 0));
    }

    function update(report) {
      var p = report.progress;
      setText("status", report.session.status);
      setText("counts", countsText(p.counts));
      setText("percent", p.percentDone + "%");
      document.getElementById("progress").value = p.percentDone;
      setText("recipients", report.recipients);
      setText("attempts", report.attempts);
      if (report.voice) {
        setText("asr", Math.round(report.voice.asr * 100) + "%");
        setText("acd", report.voice.acdS.toFixed(1));
        setText("ring", report.voice.meanRingS.toFixed(1));
        var causes = report.voice.hangupCauses.map(function (h) {
          return row([h.cause === null ? "" : h.cause, h.text || "", h.calls]);
        });
        if (!causes.length) { causes = [row([el("td", "None yet.", { colspan: "3" })])]; }
        var tbody = document.querySelector("#causes tbody");
        if (tbody) { tbody.replaceChildren.apply(tbody, causes); }
      }
      draw(report);
      body.dataset.refreshed = String(Date.now());
    }

    every(refreshMs, function () {
      return getJSON("/dashboard/api/sessions/" + encodeURIComponent(id)).then(update);
    });
  }

  if (body.dataset.page === "sessions") { sessionsPage(); }
  if (body.dataset.page === "session") { sessionPage(); }
}());
