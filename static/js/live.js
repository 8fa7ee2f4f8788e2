// The live refresh re-renders the page region when the tenant changes. A form
// the person is filling in (a file chosen, a field typed in, a field in focus)
// would be wiped by it: the refresh waits for the next change instead, and
// submitting the form loads the fresh page anyway.
(function () {
  "use strict";

  function inUse(field) {
    if (field === document.activeElement) return true;
    if (field.type === "file") return field.files !== null && field.files.length > 0;
    if (field.type === "checkbox" || field.type === "radio") {
      return field.checked !== field.defaultChecked;
    }
    if (field.tagName === "SELECT") {
      return Array.prototype.some.call(field.options, function (option) {
        return option.selected !== option.defaultSelected;
      });
    }
    return field.value !== field.defaultValue;
  }

  document.addEventListener("htmx:beforeRequest", function (event) {
    var region = event.detail.elt;
    if (!region || region.id !== "live-root") return;
    var fields = region.querySelectorAll("form input:not([type=hidden]), form textarea, form select");
    if (Array.prototype.some.call(fields, inUse)) event.preventDefault();
  });
})();
