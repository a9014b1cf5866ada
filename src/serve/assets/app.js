// spoolflow serve: live updates. The server sends Server-Sent Events
// (`point`, `change`, `reset`) when the spool changes; this script then
// re-reads the page it shows and swaps its <main id="live">, at most
// twice a second. The browser reconnects by itself and sends the last
// event id it saw, so that nothing in between is missed. What the user
// is typing into a form of the page (a reason, a priority) survives the
// swap, with the focus and the caret.
"use strict";
(function () {
  var exid = document.body.getAttribute("data-exid") || "";
  var state = document.getElementById("live-state");
  var pending = null;
  var running = false;

  function refresh() {
    pending = null;
    if (running) { schedule(); return; }
    running = true;
    fetch(location.href, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        if (!html) return;
        var doc = new DOMParser().parseFromString(html, "text/html");
        var fresh = doc.getElementById("live");
        var old = document.getElementById("live");
        if (!fresh || !old) return;
        fresh = document.importNode(fresh, true);
        var focus = putBack(fresh, typedIn(old));
        old.replaceWith(fresh);
        if (focus) focus.focus({ preventScroll: true });
      })
      .catch(function () {})
      .then(function () { running = false; });
  }

  // A form field, named by its form's action and its own name.
  function fieldKey(f) {
    return (f.form ? f.form.getAttribute("action") : "") + "\n" + f.name;
  }

  // The fields of `root` the user changed or is in (and a button the
  // focus is on).
  function typedIn(root) {
    var typed = [];
    var els = root.querySelectorAll("input, textarea, button");
    for (var i = 0; i < els.length; i++) {
      var f = els[i];
      if (f.type === "hidden") continue;
      var focused = f === document.activeElement;
      var changed = f.tagName !== "BUTTON" &&
        (f.value !== f.defaultValue || (f.validity && f.validity.badInput));
      if (focused || changed) typed.push({ key: fieldKey(f), el: f, focused: focused });
    }
    return typed;
  }

  // Puts those very elements in place of their fresh copies: what they
  // hold (a number half typed, such as "-"), the caret and the undo
  // history go with them. A form the page no longer offers takes its
  // input with it.
  function putBack(root, typed) {
    var focus = null;
    var els = root.querySelectorAll("input, textarea, button");
    typed.forEach(function (t) {
      for (var i = 0; i < els.length; i++) {
        var f = els[i];
        if (f.type === "hidden" || fieldKey(f) !== t.key) continue;
        f.replaceWith(t.el);
        if (t.focused) focus = t.el;
        return;
      }
    });
    return focus;
  }

  function schedule() {
    if (pending === null) pending = setTimeout(refresh, 500);
  }

  function showPoint(p) {
    var list = document.getElementById("events");
    if (!list) return;
    var li = document.createElement("li");
    var a = document.createElement("a");
    a.href = "/tasks/" + encodeURIComponent(p.exid || p.id || "");
    a.textContent = (p.exid || p.id || "?") + (p.nid && p.nid !== "0" ? " " + p.nid : "");
    li.appendChild(a);
    li.appendChild(document.createTextNode(" " + (p.point || "?") + " " + String(p.ts || "").slice(11, 23)));
    li.className = "ev " + String(p.point || "");
    list.insertBefore(li, list.firstChild);
    while (list.childNodes.length > 30) list.removeChild(list.lastChild);
  }

  if (!window.EventSource) return;
  if (state) state.textContent = "○ connecting";
  var es = new EventSource("/events");
  es.addEventListener("open", function () { if (state) { state.textContent = "● live"; state.className = "on"; } });
  es.addEventListener("error", function () { if (state) { state.textContent = "○ reconnecting"; state.className = ""; } });
  es.addEventListener("point", function (e) {
    var p = null;
    try { p = JSON.parse(e.data); } catch (err) { return; }
    showPoint(p);
    if (!exid || p.exid === exid || p.id === exid) schedule();
  });
  es.addEventListener("change", function () { schedule(); });
  es.addEventListener("reset", function () { schedule(); });
})();
