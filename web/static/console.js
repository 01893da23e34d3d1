/* kvmvps: the serial console page (xterm.js over a WebSocket). No inline scripts (CSP). */
"use strict";

(function () {
  var box = document.querySelector("[data-console]");
  if (!box || !window.Terminal) { return; }
  var status = document.querySelector("[data-console-status]");
  var again = document.querySelector("[data-console-reconnect]");
  var term = new window.Terminal({convertEol: false, cursorBlink: true, scrollback: 5000});
  var fit = new window.FitAddon.FitAddon();
  var socket = null, retries = 0, closing = false;
  term.loadAddon(fit);
  term.open(box);
  fit.fit();
  window.kvmvpsConsole = term;  // for people (and tests) poking at the page

  function show(state, cls) {
    status.textContent = state;
    status.className = "badge badge-" + cls;
    again.classList.toggle("hidden", cls !== "bad" && cls !== "off");
  }

  function ticket() {
    return fetch(box.dataset.ticketUrl, {
      method: "POST", credentials: "same-origin",
      headers: {"X-CSRFToken": box.dataset.csrf, "Accept": "application/json"}
    }).then(function (r) {
      return r.json().then(function (body) {
        if (!r.ok) { throw new Error(body.error || ("HTTP " + r.status)); }
        return body;
      });
    });
  }

  function connect() {
    show("connecting", "wait");
    ticket().then(function (t) {
      socket = new WebSocket(t.url);
      socket.binaryType = "arraybuffer";
      socket.onopen = function () {
        retries = 0;
        show("connected", "ok");
        term.focus();
        socket.send("\r");  // wake the login prompt
      };
      socket.onmessage = function (ev) {
        term.write(typeof ev.data === "string" ? ev.data : new Uint8Array(ev.data));
      };
      socket.onclose = function (ev) {
        socket = null;
        if (closing) { return; }
        if (ev.code === 1000 || retries >= 3) {
          show(ev.reason || "disconnected", "off");
          return;
        }
        retries += 1;  // a dropped connection: try again with a fresh ticket
        show("reconnecting", "wait");
        window.setTimeout(connect, 1000 * retries);
      };
    }).catch(function (err) { show(err.message, "bad"); });
  }

  term.onData(function (data) {
    if (socket && socket.readyState === WebSocket.OPEN) { socket.send(data); }
  });
  window.addEventListener("resize", function () { fit.fit(); });
  window.addEventListener("beforeunload", function () { closing = true; });
  again.addEventListener("click", function () { retries = 0; connect(); });
  connect();
})();
