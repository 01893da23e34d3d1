/* kvmvps: the graphical console page (noVNC over a WebSocket). An ES module; no inline scripts (CSP). */
import RFB from "./vendor/novnc/core/rfb.js";

const box = document.querySelector("[data-vnc]");
const status = document.querySelector("[data-console-status]");
const again = document.querySelector("[data-console-reconnect]");
const cad = document.querySelector("[data-vnc-cad]");
let rfb = null, retries = 0, closing = false;

function show(state, cls) {
  status.textContent = state;
  status.className = "badge badge-" + cls;
  again.classList.toggle("hidden", cls !== "bad" && cls !== "off");
}

async function ticket() {
  const r = await fetch(box.dataset.ticketUrl, {
    method: "POST", credentials: "same-origin",
    headers: {"X-CSRFToken": box.dataset.csrf, "Accept": "application/json",
              "Content-Type": "application/json"},
    body: JSON.stringify({type: "vnc"})
  });
  const body = await r.json();
  if (!r.ok) { throw new Error(body.error || ("HTTP " + r.status)); }
  return body;
}

async function connect() {
  show("connecting", "wait");
  let t;
  try { t = await ticket(); } catch (err) { show(err.message, "bad"); return; }
  rfb = new RFB(box, t.url, {shared: true});
  rfb.scaleViewport = true;
  rfb.focusOnClick = true;
  window.kvmvpsVnc = rfb;  // for people (and tests) poking at the page
  rfb.addEventListener("connect", () => { retries = 0; show("connected", "ok"); rfb.focus(); });
  rfb.addEventListener("disconnect", (ev) => {
    rfb = null;
    if (closing) { return; }
    if (ev.detail.clean || retries >= 3) { show("disconnected", "off"); return; }
    retries += 1;  // a dropped connection: try again with a fresh ticket
    show("reconnecting", "wait");
    window.setTimeout(connect, 1000 * retries);
  });
  rfb.addEventListener("securityfailure", (ev) => { show(ev.detail.reason || "refused", "bad"); });
}

cad.addEventListener("click", () => { if (rfb) { rfb.sendCtrlAltDel(); } });
again.addEventListener("click", () => { retries = 0; connect(); });
window.addEventListener("beforeunload", () => { closing = true; });
connect();
