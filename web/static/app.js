/* kvmvps: live progress, live states, copy buttons. No inline scripts (CSP). */
"use strict";

(function () {
  function getJSON(url) {
    return fetch(url, {credentials: "same-origin", headers: {"Accept": "application/json"}})
      .then(function (r) { if (!r.ok) { throw new Error("HTTP " + r.status); } return r.json(); });
  }

  function setBadge(el, state) {
    if (!el || el.dataset.state === state) { return; }
    var cls = {running: "ok", succeeded: "ok", queued: "wait", building: "wait", deleting: "wait",
               stopped: "off", suspended: "warn", error: "bad", failed: "bad"}[state] || "off";
    el.className = "badge badge-" + cls;
    el.dataset.state = state;
    el.textContent = state;
  }

  /* The build progress page: poll the job until it ends. */
  function followJob(card) {
    var url = card.dataset.jobUrl, doneUrl = card.dataset.doneUrl, delay = 1000;
    var headline = card.querySelector("[data-headline]");
    function paint(job) {
      var bar = card.querySelector("[data-progress]");
      var pct = job.state === "succeeded" ? 100 : job.progress;
      bar.value = pct;
      card.querySelector("[data-percent]").textContent = pct;
      card.querySelector("[data-state]").textContent = job.state;
      var passed = true;
      card.querySelectorAll("[data-step]").forEach(function (li) {
        var name = li.dataset.step;
        li.className = "";
        if (job.state === "succeeded") { li.className = "done"; return; }
        if (name === job.step) {
          li.className = job.state === "failed" ? "failed" : "current";
          passed = false;
        } else if (passed && job.step) { li.className = "done"; }
      });
      if (job.state === "queued") { headline.textContent = "Waiting for a worker…"; }
      if (job.state === "running") { headline.textContent = "Working…"; }
    }
    function tick() {
      getJSON(url).then(function (job) {
        paint(job);
        if (job.state === "succeeded") {
          headline.textContent = "Done";
          card.querySelector("[data-done]").classList.remove("hidden");
          window.setTimeout(function () { window.location.assign(doneUrl); }, 600);
          return;
        }
        if (job.state === "failed") {
          headline.textContent = "It did not work";
          var err = card.querySelector("[data-error]");
          err.textContent = job.error || "The job failed.";
          err.classList.remove("hidden");
          return;
        }
        window.setTimeout(tick, delay);
      }).catch(function () { window.setTimeout(tick, 3000); });
    }
    tick();
  }

  /* The dashboard: refresh every row's state badge from the database. */
  function followServers(table) {
    function tick() {
      getJSON(table.dataset.poll).then(function (data) {
        data.servers.forEach(function (s) {
          var row = table.querySelector('tr[data-id="' + s.id + '"]');
          if (!row) { return; }
          setBadge(row.querySelector(".badge"), s.state);
          row.querySelector("[data-ip]").textContent = s.ip || "-";
          var job = row.querySelector("[data-job]");
          job.textContent = s.job ? (s.job.kind.replace("_", " ") + ": " +
            (s.job.step || s.job.state) + " " + s.job.progress + "%") : "";
        });
        window.setTimeout(tick, 3000);
      }).catch(function () { window.setTimeout(tick, 10000); });
    }
    window.setTimeout(tick, 3000);
  }

  /* One server's page: reload when its state, or whether a job runs, changes. */
  function followServer(head) {
    var badge = head.querySelector(".badge");
    var busy = head.dataset.busy === "1";
    function tick() {
      getJSON(head.dataset.pollOne).then(function (data) {
        var me = data.servers.filter(function (s) { return s.id === head.dataset.id; })[0];
        if (!me) { window.location.assign(head.dataset.listUrl); return; }
        if (me.state !== badge.dataset.state || Boolean(me.job) !== busy) {
          window.location.reload();
          return;
        }
        window.setTimeout(tick, 3000);
      }).catch(function () { window.setTimeout(tick, 10000); });
    }
    window.setTimeout(tick, 3000);
  }

  function copyButtons() {
    document.querySelectorAll("[data-copy]").forEach(function (button) {
      button.addEventListener("click", function () {
        var input = document.querySelector(button.dataset.copy);
        input.select();
        var done = function () {
          button.textContent = "Copied";
          window.setTimeout(function () { button.textContent = "Copy"; }, 2000);
        };
        if (navigator.clipboard && window.isSecureContext) {
          navigator.clipboard.writeText(input.value).then(done, function () {
            document.execCommand("copy"); done();
          });
        } else {
          document.execCommand("copy");
          done();
        }
      });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var card = document.querySelector("[data-job-url]");
    if (card) { followJob(card); }
    var table = document.querySelector("table[data-poll]");
    if (table) { followServers(table); }
    var head = document.querySelector("[data-poll-one]");
    if (head) { followServer(head); }
    copyButtons();
  });
}());
