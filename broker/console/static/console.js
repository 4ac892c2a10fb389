/* Casebridge console: small progressive enhancement. Everything works without it.
 * - polls /events for the unread/awaiting/overdue counts; when they change, the inbox or
 *   outbox list on the page is fetched again (/inbox/rows) and swapped in, new rows marked,
 *   focus kept, and the change announced in the polite live region;
 * - asks the server for the policy preview when recipients, markings or files change;
 * - uploads files chosen while composing, each with a progress bar (filesWidget).
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
    form.addEventListener("files-changed", function () {
      clearTimeout(timer);
      timer = setTimeout(refresh, 100);
    });
    form.addEventListener("change", function (event) {
      var name = event.target && event.target.name;
      if (["to", "task_force", "purpose", "handling", "tlp"].indexOf(name) >= 0 || (name && name.charAt(0) === "b")) {
        clearTimeout(timer);
        timer = setTimeout(refresh, 400);
      }
    });
  }

  function humanSize(size) {
    if (size < 1000) { return size + " B"; }
    var units = ["kB", "MB", "GB", "TB"];
    var value = size;
    for (var i = 0; i < units.length; i++) {
      value = value / 1000;
      if (value < 1000 || i === units.length - 1) { return value.toFixed(1) + " " + units[i]; }
    }
    return size + " B";
  }

  /* Files while composing: each chosen file is sent on its own (XMLHttpRequest, so the upload
   * reports progress) as the request body of POST /compose/files, which streams it into the
   * node; the answer's handle becomes a hidden "attachment" field of the form. */
  function filesWidget() {
    var box = document.getElementById("files");
    var form = document.getElementById("compose");
    var input = document.getElementById("file-input");
    var list = document.getElementById("file-list");
    if (!box || !form || !input || !list) { return; }
    var token = form.querySelector('input[name="csrf"]').value;
    var active = 0;

    function changed() { form.dispatchEvent(new Event("files-changed")); }
    function busy(delta) {
      active += delta;
      form.querySelectorAll('button[name="op"][value="send"]').forEach(function (b) {
        b.disabled = active > 0;
      });
    }
    function span(cls, text) {
      var el = document.createElement("span");
      el.className = cls;
      el.textContent = text;
      return el;
    }

    list.addEventListener("click", function (event) {
      var button = event.target.closest ? event.target.closest("[data-detach]") : null;
      if (!button) { return; }
      event.preventDefault();
      var item = button.closest("li");
      if (item && item.xhr) { item.xhr.abort(); }
      if (item) { item.remove(); }
      if (live) { live.textContent = button.textContent; }
      changed();
    });

    function upload(file) {
      var type = file.type || "application/octet-stream";
      var item = document.createElement("li");
      item.className = "file uploading";
      var code = document.createElement("code");
      code.textContent = type;
      var kind = span("file-type", "");
      kind.appendChild(code);
      var progress = document.createElement("progress");
      progress.max = Math.max(file.size, 1);
      progress.value = 0;
      progress.setAttribute("aria-label", box.getAttribute("data-uploading-text") + " " + file.name);
      var status = span("file-status", box.getAttribute("data-uploading-text"));
      var remove = document.createElement("button");
      remove.type = "button";
      remove.className = "secondary";
      remove.setAttribute("data-detach", "");
      remove.textContent = box.getAttribute("data-remove-text");
      var hidden = span("visually-hidden", " " + file.name);
      remove.appendChild(hidden);
      [span("file-name", file.name), document.createTextNode(" "), kind,
        document.createTextNode(" "), span("file-size", humanSize(file.size)),
        document.createTextNode(" "), progress, document.createTextNode(" "), status,
        document.createTextNode(" "), remove].forEach(function (n) { item.appendChild(n); });
      list.appendChild(item);

      var query = new URLSearchParams({ name: file.name, media_type: type });
      var xhr = new XMLHttpRequest();
      item.xhr = xhr;
      xhr.open("POST", box.getAttribute("data-upload") + "?" + query.toString());
      xhr.setRequestHeader("X-CSRF-Token", token);
      xhr.setRequestHeader("Content-Type", "application/octet-stream");
      xhr.upload.addEventListener("progress", function (event) {
        if (event.lengthComputable) {
          progress.max = Math.max(event.total, 1);
          progress.value = event.loaded;
        }
      });
      function done() { item.xhr = null; item.classList.remove("uploading"); busy(-1); }
      function failed(text) {
        done();
        item.classList.add("failed");
        status.textContent = box.getAttribute("data-failed-text") + " " + text;
        status.setAttribute("role", "alert");
      }
      xhr.addEventListener("load", function () {
        var data = null;
        try { data = JSON.parse(xhr.responseText); } catch (e) { data = null; }
        if (xhr.status !== 201 || !data || !data.attachment) {
          failed((data && data.error) || String(xhr.status));
          return;
        }
        done();
        var field = document.createElement("input");
        field.type = "hidden";
        field.name = "attachment";
        field.value = data.attachment;
        item.appendChild(field);
        item.setAttribute("data-file", data.attachment);
        progress.value = progress.max;
        status.textContent = box.getAttribute("data-uploaded-text");
        if (live) { live.textContent = file.name + ": " + status.textContent; }
        changed();
      });
      xhr.addEventListener("error", function () { failed("network"); });
      xhr.addEventListener("abort", function () { done(); });
      busy(1);
      xhr.send(file);
    }

    input.addEventListener("change", function () {
      Array.prototype.forEach.call(input.files, upload);
      input.value = "";
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    updateCounts();
    setInterval(updateCounts, 10000);
    previewWatcher();
    filesWidget();
  });
})();
