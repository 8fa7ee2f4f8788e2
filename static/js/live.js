// The live refresh re-renders the page region when the tenant changes. A form
// the person is filling in (a file chosen, a field typed in, a field in focus)
// would be wiped by it: the refresh waits for the next change instead, and
// submitting the form loads the fresh page anyway.
//
// A page whose table htmx swapped (a filter applied, an older page followed)
// pushed the new address: the refresh asks for that address, not the one the
// page was first loaded with, and a search form (method GET) whose fields say
// what the address says is not being filled in.
(function () {
  "use strict";

  function asked(field) {
    var form = field.form;
    if (!form || (form.getAttribute("method") || "get").toLowerCase() !== "get") return null;
    if (field.type === "checkbox" || field.type === "radio" || field.type === "file") return null;
    return new URLSearchParams(window.location.search).get(field.name) || "";
  }

  function inUse(field) {
    if (field === document.activeElement) return true;
    var inAddress = asked(field);
    if (inAddress !== null) return field.value !== inAddress;
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

  document.addEventListener("htmx:configRequest", function (event) {
    var region = event.detail.elt;
    if (!region || region.id !== "live-root") return;
    event.detail.path = window.location.pathname + window.location.search;
  });

  document.addEventListener("htmx:beforeRequest", function (event) {
    var region = event.detail.elt;
    if (!region || region.id !== "live-root") return;
    var fields = region.querySelectorAll("form input:not([type=hidden]), form textarea, form select");
    if (Array.prototype.some.call(fields, inUse)) event.preventDefault();
  });
})();
