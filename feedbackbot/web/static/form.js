// Checks the feedback form in the browser with the API's rules before it is sent, and keeps a
// double click from sending it twice. The server checks everything again, and without this
// script the form still works through the browser's own required/minlength checks.
(function () {
  "use strict";

  var form = document.getElementById("feedback-form");
  if (!form) {
    return;
  }
  // The script's messages replace the browser's built-in bubbles.
  form.noValidate = true;

  // Unicode code points after trimming, the unit of the API's length rules.
  function length(value) {
    return Array.from(value.trim()).length;
  }

  var rules = {
    customer_name: function (value) {
      var size = length(value);
      if (size === 0) {
        return "Enter your name.";
      }
      if (size > 200) {
        return "The name has " + size + " characters; use at most 200.";
      }
      if (/[\u0000-\u001f\u007f]/.test(value)) {
        return "The name must not contain control characters.";
      }
      return "";
    },
    customer_email: function (value) {
      var address = value.trim();
      if (address === "") {
        return "Enter your email address.";
      }
      var at = address.lastIndexOf("@");
      if (at < 1 || at === address.length - 1 || /\s/.test(address) || address.slice(at + 1).indexOf(".") < 1) {
        return "Enter an email address such as name@example.com.";
      }
      if (!/^[\x21-\x7e]+$/.test(address.slice(0, at))) {
        return "The part before the @ must use ASCII letters, digits and punctuation only.";
      }
      return "";
    },
    rating: function () {
      var checked = form.querySelector('input[name="rating"]:checked');
      return checked ? "" : "Choose a rating from 1 to 5.";
    },
    feedback_text: function (value) {
      var size = length(value);
      if (size < 10) {
        return "Write at least 10 characters; you have " + size + ".";
      }
      if (size > 5000) {
        return "The text has " + size + " characters; shorten it to at most 5000.";
      }
      return "";
    }
  };

  function control(name) {
    return name === "rating" ? document.getElementById("rating") : form.elements[name];
  }

  function show(name, message) {
    var element = control(name);
    var output = document.getElementById(name + "-error");
    output.textContent = message;
    if (message) {
      element.setAttribute("aria-invalid", "true");
    } else {
      element.removeAttribute("aria-invalid");
    }
    element.closest(".field").classList.toggle("has-error", Boolean(message));
    return message;
  }

  function check(name) {
    var value = name === "rating" ? "" : form.elements[name].value;
    return show(name, rules[name](value));
  }

  // Fields are checked on the first submit, then again on every change. Checking earlier,
  // when a field loses focus, would insert a message that moves the submit button down
  // while the user is clicking it, so the click would miss.
  var attempted = false;
  Object.keys(rules).forEach(function (name) {
    var type = name === "rating" ? "change" : "input";
    var target = name === "rating" ? document.getElementById("rating") : form.elements[name];
    target.addEventListener(type, function () {
      if (attempted) {
        check(name);
      }
    });
  });

  var sending = false;
  var button = document.getElementById("submit-button");
  form.addEventListener("submit", function (event) {
    attempted = true;
    if (sending) {
      // A second click while the first post is under way. The server would replay the
      // same feedback for the same form key anyway.
      event.preventDefault();
      return;
    }
    var invalid = Object.keys(rules).filter(function (name) {
      return check(name) !== "";
    });
    if (invalid.length > 0) {
      event.preventDefault();
      var first = invalid[0] === "rating" ? form.querySelector('input[name="rating"]') : form.elements[invalid[0]];
      first.focus();
      return;
    }
    sending = true;
    button.disabled = true;
    button.textContent = "Sending…";
  });

  // The page may come back from the back/forward cache with the button still disabled.
  window.addEventListener("pageshow", function () {
    sending = false;
    button.disabled = false;
    button.textContent = "Send feedback";
  });

  var summary = document.getElementById("error-summary");
  if (summary) {
    summary.focus();
  }
})();
