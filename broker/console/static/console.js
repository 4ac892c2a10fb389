/* Casebridge console: small progressive enhancement. Everything works without it.
 * - polls /events for the unread/awaiting/overdue counts and announces new arrivals;
 * - asks the server for the policy preview when recipients or markings change.
 * No inline script, no eval (CSP: script-src 'self'). */
(function () {
  "use strict";
  var live = document.getElementById("live");
  var lastNewest = null;

  function updateCounts() {
    if (!document.querySelector("[data-count]")) { return; }
    fetch("/events", { credentials: "same-origin", headers: { "Accept": "application/json" } })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (data) {
        if (!data || data.unread === undefined) { return; }
        ["unread", "awaiting", "overdue"].forEach(function (key) {
          document.querySelectorAll('[data-count="' + key + '"]').forEach(function (el) {
            el.textContent = String(data[key]);
          });
        });
        if (lastNewest !== null && data.newest && data.newest !== lastNewest && live) {
          live.textContent = live.getAttribute("data-new-text");
        }
        lastNewest = data.newest || "";
      })
      .catch(function () { /* offline for a moment: try again at the next tick */ });
  }

  function previewWatcher() {
    var form = document.getElementById("compose");
    var target = document.getElementById("preview");
    if (!form || !target) { return; }
    var timer = null;
    function refresh() {
      var data = new URLSearchParams(new FormData(form));
      data.set("op", "preview");
      fetch("/compose/preview", {
        method: "POST", credentials: "same-origin", body: data,
        headers: { "X-CSRF-Token": form.querySelector('input[name="csrf"]').value }
      }).then(function (r) { return r.ok ? r.text() : null; })
        .then(function (html) {
          if (html === null) { return; }
          var doc = new DOMParser().parseFromString(html, "text/html");
          var table = doc.querySelector("table.preview");
          var heading = target.querySelector("h2");
          target.replaceChildren(heading);
          if (table) { target.appendChild(document.importNode(table, true)); }
        }).catch(function () { /* the Check button still works */ });
    }
    form.addEventListener("change", function (event) {
      var name = event.target && event.target.name;
      if (["to", "task_force", "purpose", "handling", "tlp"].indexOf(name) >= 0 || (name && name.charAt(0) === "b")) {
        clearTimeout(timer);
        timer = setTimeout(refresh, 400);
      }
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    updateCounts();
    setInterval(updateCounts, 15000);
    previewWatcher();
  });
})();
