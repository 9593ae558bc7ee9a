// failoverd console: one server-sent-events stream per page. Each `change` event makes
// every live region (an element with data-live="URL") fetch its fresh HTML through htmx;
// the header says whether the stream is up, lost, or reconnecting. No inline script is
// allowed by the page's Content-Security-Policy, so all behaviour lives here.
(function () {
  "use strict";
  var status = document.getElementById("live-status");
  if (!status) { return; } // signed out: no stream
  // Times at which a change was applied to the page (ms since the epoch, with the version
  // the server sent), for the latency benchmark; bounded.
  window.failoverdApplied = [];

  function show(cls, text) {
    status.className = "live " + cls;
    status.textContent = text;
  }

  function refresh(version) {
    var regions = document.querySelectorAll("[data-live]");
    var pending = [];
    regions.forEach(function (el) {
      var url = el.getAttribute("data-live");
      pending.push(htmx.ajax("GET", url, { target: el, swap: "outerHTML" }));
    });
    Promise.all(pending).then(function () {
      var list = window.failoverdApplied;
      list.push({ version: version, at: Date.now(), perf: performance.now() });
      if (list.length > 1000) { list.shift(); }
      document.body.setAttribute("data-version", String(version));
    });
  }

  var source = null;
  var retry = null;
  function connect() {
    if (retry) { clearTimeout(retry); retry = null; }
    source = new EventSource("/ui/events");
    source.addEventListener("open", function () {
      show("live-ok", "Live");
    });
    source.addEventListener("change", function (e) {
      var version = 0;
      try { version = JSON.parse(e.data).version; } catch (_) { /* keep 0 */ }
      refresh(version);
    });
    source.addEventListener("error", function () {
      if (source.readyState === EventSource.CLOSED) {
        // The browser gave up (e.g. the session ended): try again ourselves.
        show("live-lost", "Live updates lost — retrying in 3 s (reload or sign in again if it persists)");
        source.close();
        retry = setTimeout(connect, 3000);
      } else {
        show("live-lost", "Live updates lost — reconnecting…");
      }
    });
  }
  connect();

  // Relative times ("3 min ago") drift while the page is open: the next change event
  // re-renders them; in between, refresh every 30 s so they stay roughly right.
  setInterval(function () { refresh(Number(document.body.getAttribute("data-version") || 0)); }, 30000);
})();
