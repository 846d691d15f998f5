// Small progressive enhancements; every page works without this file.
(function () {
  "use strict";
  // Live SLA countdowns: elements with data-due="<UTC timestamp>".
  function span(secs) {
    var d = Math.floor(secs / 86400), h = Math.floor((secs % 86400) / 3600), m = Math.floor((secs % 3600) / 60);
    if (d) return d + " d " + h + " h";
    if (h) return h + " h " + m + " min";
    return m + " min";
  }
  function tick() {
    var now = Date.now();
    document.querySelectorAll("[data-due]").forEach(function (el) {
      var due = Date.parse(el.getAttribute("data-due"));
      if (isNaN(due)) return;
      var secs = Math.round((due - now) / 1000);
      var prefix = el.textContent.indexOf("SLA") === 0 ? "SLA " : "";
      el.textContent = prefix + (secs >= 0 ? "in " + span(secs) : "overdue by " + span(-secs));
      el.classList.toggle("late", secs < 0);
    });
  }
  setInterval(tick, 30000);
  // "/" focuses the search box (unless typing in a field already).
  document.addEventListener("keydown", function (e) {
    if (e.key !== "/" || /^(INPUT|TEXTAREA|SELECT)$/.test(document.activeElement.tagName)) return;
    var target = document.querySelector("[data-shortcut='/']");
    if (target) { e.preventDefault(); target.focus(); }
  });
  // Character counters for textareas with data-counter="<id of the output element>".
  document.querySelectorAll("textarea[data-counter]").forEach(function (ta) {
    var out = document.getElementById(ta.getAttribute("data-counter"));
    var max = ta.getAttribute("maxlength");
    function update() { if (out) out.textContent = ta.value.length + " / " + max + " characters"; }
    ta.addEventListener("input", update); update();
  });
  // "Select all" boxes: data-select-all="<form id>" ticks every case box of that form.
  document.querySelectorAll("input[data-select-all]").forEach(function (all) {
    all.addEventListener("change", function () {
      var form = all.getAttribute("data-select-all");
      document.querySelectorAll("input[name='case_id'][form='" + form + "']").forEach(function (box) {
        box.checked = all.checked;
      });
    });
  });
  // Ask before irreversible decisions.
  document.querySelectorAll("button.danger-btn").forEach(function (b) {
    b.addEventListener("click", function (e) {
      if (!window.confirm(b.textContent.trim() + "? This is recorded on the audit trail.")) e.preventDefault();
    });
  });
})();
