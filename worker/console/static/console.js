// The console's only script (the Content-Security-Policy allows no other): it refreshes the
// overview without a full reload and ticks every listed dead letter at once.  Every page works
// without it; what it inserts is HTML the server rendered and escaped.
"use strict";

function refreshOverview(live) {
  const url = live.dataset.refreshUrl;
  const seconds = Math.max(1, Number(live.dataset.refreshS) || 5);
  const tick = async () => {
    try {
      const answer = await fetch(url, { credentials: "same-origin", headers: { Accept: "text/html" } });
      if (answer.ok) {
        const doc = new DOMParser().parseFromString(await answer.text(), "text/html");
        live.replaceChildren(...doc.body.childNodes);
        live.dataset.refreshed = String((Number(live.dataset.refreshed) || 0) + 1);
      } else if (answer.status === 401) {
        window.location.reload();
        return;
      }
    } catch (err) {
      // Network hiccup: keep the last figures and try again at the next tick.
    }
    window.setTimeout(tick, seconds * 1000);
  };
  window.setTimeout(tick, seconds * 1000);
}

function selectAll(box) {
  box.addEventListener("change", () => {
    for (const other of document.querySelectorAll('#dead-letters input[name="id"]')) {
      other.checked = box.checked;
    }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  const live = document.getElementById("live");
  if (live) refreshOverview(live);
  const box = document.getElementById("select-all");
  if (box) selectAll(box);
});
