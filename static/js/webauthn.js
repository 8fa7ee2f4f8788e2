// Security keys and passkeys: asks the browser's authenticator with the
// options the server put in the page (a json_script element), and submits
// its answer with the form around the button. No inline script (CSP).
(function () {
  "use strict";

  function start(button) {
    var form = button.closest("form");
    var options = JSON.parse(document.getElementById(button.dataset.options).textContent);
    var field = form.querySelector("input[name='" + button.dataset.field + "']");
    var status = document.getElementById(button.dataset.status);
    var create = button.dataset.mode === "create";
    if (!window.PublicKeyCredential) {
      status.textContent = "This browser does not support security keys.";
      return;
    }
    status.textContent = "Follow your browser's prompt.";
    var request;
    try {
      request = create
        ? navigator.credentials.create({
            publicKey: PublicKeyCredential.parseCreationOptionsFromJSON(options),
          })
        : navigator.credentials.get({
            publicKey: PublicKeyCredential.parseRequestOptionsFromJSON(options),
          });
    } catch (error) {
      status.textContent = "The security key could not be asked (" + error.name + ").";
      return;
    }
    request.then(
      function (credential) {
        field.value = JSON.stringify(credential.toJSON());
        form.submit();
      },
      function (error) {
        status.textContent = "The security key did not answer (" + error.name + "). Try again.";
      }
    );
  }

  document.addEventListener("click", function (event) {
    var button = event.target.closest("button[data-webauthn]");
    if (button) {
      event.preventDefault();
      start(button);
    }
  });
})();
