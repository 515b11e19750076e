// Tally dashboard: live refresh of the parts of a page marked data-live, and confirmation of
// destructive forms. Same origin only; no dependencies.
(function () {
  "use strict";
  var LIVE_INTERVAL_MS = 3000;

  document.addEventListener("submit", function (event) {
    var message = event.target.getAttribute("data-confirm");
    if (message && !window.confirm(message)) { event.preventDefault(); }
  });

  function refresh() {
    if (document.hidden) { return; }
    var live = document.querySelectorAll("[data-live][id]");
    if (live.length === 0) { return; }
    fetch(window.location.href, { credentials: "same-origin", headers: { "X-Tally-Live": "1" } })
      .then(function (response) { return response.ok ? response.text() : null; })
      .then(function (html) {
        if (!html) { return; }
        var fresh = new DOMParser().parseFromString(html, "text/html");
        live.forEach(function (element) {
          var next = fresh.getElementById(element.id);
          if (next && next.innerHTML !== element.innerHTML) { element.innerHTML = next.innerHTML; }
        });
      })
      .catch(function () { /* offline for a moment: try again next tick */ });
  }

  window.setInterval(refresh, LIVE_INTERVAL_MS);
})();
