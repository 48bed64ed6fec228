// The queue pages (templates/exceptions/queue.html, my_work.html). No inline code: the
// Content-Security-Policy refuses it, so the page's small behaviours live here.
(function () {
  "use strict";

  // "Select all on this page": ticks or unticks every case box of its form. Delegated from the
  // document, so it keeps working after htmx swaps the results region.
  document.addEventListener("change", function (event) {
    var box = event.target;
    if (!(box instanceof HTMLInputElement) || !box.hasAttribute("data-select-all")) {
      return;
    }
    var form = box.form || box.closest("form");
    if (!form) {
      return;
    }
    form.querySelectorAll('input[type="checkbox"][name="case"]').forEach(function (item) {
      item.checked = box.checked;
    });
  });
})();
