/* Casebridge console: small progressive enhancement. Everything works without it.
 * - polls /events for the unread/awaiting/overdue counts; when they change, the inbox or
 *   outbox list on the page is fetched again (/inbox/rows) and swapped in, new rows marked,
 *   focus kept, and the change announced in the polite live region;
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
        var signature = [data.newest, data.unread, data.awaiting, data.overdue].join("|");
        if (lastNewest !== null && signature !== lastNewest) {
          if (!refreshList() && live && data.newest) {
            live.textContent = live.getAttribute("data-new-text");
          }
        }
        lastNewest = signature;
      })
      .catch(function () { /* offline for a moment: try again at the next tick */ });
  }

  /* Swap in the list as the server renders it now; false when the page shows no list. */
  function refreshList() {
    var list = document.getElementById("list");
    if (!list || !list.getAttribute("data-live")) { return false; }
    fetch(list.getAttribute("data-live"), { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        if (html === null) { return; }
        var doc = new DOMParser().parseFromString(html, "text/html");
        var before = {};
        list.querySelectorAll("tr[data-id]").forEach(function (tr) {
          before[tr.getAttribute("data-id")] = true;
        });
        var focused = document.activeElement;
        var focusHref = focused && list.contains(focused) ? focused.getAttribute("href") : null;
        var fresh = [];
        doc.body.querySelectorAll("tr[data-id]").forEach(function (tr) {
          if (!before[tr.getAttribute("data-id")]) {
            tr.classList.add("fresh");
            var link = tr.querySelector("a");
            fresh.push(link ? link.textContent : "");
          }
        });
        list.replaceChildren.apply(list, Array.prototype.map.call(
          doc.body.childNodes, function (n) { return document.importNode(n, true); }));
        if (focusHref) {  // keyboard users stay where they were
          var again = list.querySelector('a[href="' + focusHref + '"]');
          if (again) { again.focus(); }
        }
        if (live) {
          live.textContent = fresh.length
            ? list.getAttribute("data-fresh-text") + " " + fresh.join(", ")
            : list.getAttribute("data-changed-text");
        }
      }).catch(function () { /* offline for a moment: the next tick tries again */ });
    return true;
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
    setInterval(updateCounts, 10000);
    previewWatcher();
  });
})();
