// The editor's desk. Every form works without this script; with it, a change is sent with fetch and the
// page is brought up to date in place (keeping the focus, so a keyboard user can press the same button
// again), items can be dragged, the subject is counted as it is typed, a send shows its progress, and a
// change made elsewhere (another tab, a command, a template edit) is shown at once, unless something typed
// here is not saved yet: then the page says so and a save is refused ("changed elsewhere; reload").
"use strict";
(() => {
  const desk = document.getElementById("desk");
  const REGIONS = ["email-pane", "shape", "checks", "send", "send-test"];
  const dirty = new Set(); // ids of fields typed in and not saved
  let number = desk.dataset.number;
  let version = desk.dataset.version;
  let shown = Number(desk.dataset.live); // the preview's version this page shows
  let busy = Promise.resolve();

  const say = (text) => {
    const notice = document.getElementById("notice");
    notice.textContent = text;
    notice.hidden = !text;
  };
  const alarm = (text, reload) => {
    document.getElementById("alert-text").textContent = text;
    document.getElementById("alert").hidden = !text;
    document.getElementById("reload").hidden = !reload;
  };

  // -- the subject's length, as it is typed ------------------------------------------------------------
  const count = () => {
    const input = document.getElementById("subject");
    const output = document.getElementById("subject-count");
    if (!input || !output) return;
    const length = (input.value.trim() ? input.value.trim().replace(/\s+/g, " ") : input.placeholder).length;
    const limit = Number(input.dataset.limit);
    output.textContent = `${length} / ${limit}`;
    output.classList.toggle("over", length > limit);
  };
  document.addEventListener("input", (event) => {
    if (event.target.matches("[data-draft-field]")) dirty.add(event.target.id);
    if (event.target.id === "subject") count();
  });

  // -- changes -----------------------------------------------------------------------------------------
  const send = async (form, extra = {}) => {
    const data = new FormData(form);
    for (const [key, value] of Object.entries(extra)) data.set(key, value);
    data.set("number", number);
    data.set("version", version);
    const focused = document.activeElement && document.activeElement.id;
    desk.setAttribute("aria-busy", "true");
    try {
      const response = await fetch(form.action, { method: "POST", body: data, headers: { "X-Desk": "1" } });
      const answer = await response.json().catch(() => ({ error: `the desk answered ${response.status}` }));
      if (response.status === 409) {
        alarm(`${answer.error}.`, true);
        return;
      }
      if (!response.ok) {
        alarm(answer.error, false);
        return;
      }
      alarm("", false);
      for (const field of form.querySelectorAll("[data-draft-field]")) dirty.delete(field.id);
      number = String(answer.number);
      version = String(answer.version);
      say(answer.message ? answer.message.charAt(0).toUpperCase() + answer.message.slice(1) + "." : "");
      await refresh(focused);
    } finally {
      desk.removeAttribute("aria-busy");
    }
  };
  document.addEventListener("submit", (event) => {
    const form = event.target;
    if (!form.matches("form[data-desk]")) return;
    event.preventDefault();
    busy = busy.then(() => send(form));
  });
  document.addEventListener("keydown", (event) => { // Ctrl+Enter saves the note or the subject
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey) && event.target.matches("[data-draft-field]")) {
      event.preventDefault();
      event.target.form.requestSubmit();
    }
  });

  // -- bringing the page up to date in place -----------------------------------------------------------
  const refresh = async (focused) => {
    const response = await fetch(location.href, { headers: { "X-Desk": "refresh" } });
    const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
    const freshDesk = fresh.getElementById("desk");
    if (!freshDesk) return;
    for (const id of REGIONS) {
      const old = document.getElementById(id);
      const replacement = fresh.getElementById(id);
      if (!old || !replacement) {
        if (old && !replacement) old.remove();
        if (!old && replacement) document.getElementById("panel").append(document.adoptNode(replacement));
        continue;
      }
      for (const field of dirty) { // what is typed and not saved stays as it is
        const mine = document.getElementById(field);
        const theirs = replacement.querySelector(`#${field}`);
        if (mine && theirs) theirs.replaceWith(mine);
      }
      const frame = old.querySelector("iframe#email");
      const freshFrame = replacement.querySelector("iframe#email");
      if (frame && freshFrame && frame.getAttribute("src") === freshFrame.getAttribute("src")) {
        freshFrame.replaceWith(frame); // unchanged: no reload, no flicker
      }
      const openNote = old.querySelector("#note-box");
      if (openNote && openNote.open) replacement.querySelector("#note-box")?.setAttribute("open", "");
      old.replaceWith(document.adoptNode(replacement));
    }
    for (const key of ["live", "number", "version", "progress"]) desk.dataset[key] = freshDesk.dataset[key];
    shown = Number(desk.dataset.live);
    if (!dirty.size) {
      number = desk.dataset.number;
      version = desk.dataset.version;
    }
    if (focused) keepFocus(focused);
    count();
    watchProgress();
  };
  // The focus stays on the control that was used; one that cannot be used any more (an item moved to the
  // end cannot go further down) hands it to its counterpart on the same item.
  const keepFocus = (id) => {
    const counterpart = { "up-": "down-", "down-": "up-", "out-": "back-", "back-": "out-" };
    let target = document.getElementById(id);
    const prefix = Object.keys(counterpart).find((key) => id.startsWith(key));
    if ((!target || target.disabled) && prefix) {
      target = document.getElementById(counterpart[prefix] + id.slice(prefix.length)) || target;
    }
    target?.focus();
  };
  document.getElementById("reload").addEventListener("click", async () => {
    dirty.clear();
    alarm("", false);
    await refresh();
    number = desk.dataset.number;
    version = desk.dataset.version;
  });

  // -- changes made elsewhere --------------------------------------------------------------------------
  const events = new EventSource("/events");
  events.onopen = () => { document.documentElement.dataset.live = "yes"; };
  events.onmessage = (event) => {
    if (Number(event.data) === shown) return;
    busy = busy.then(async () => {
      if (Number(event.data) === shown) return;
      if (dirty.size) { // keep what is typed; its save will be refused, and says why
        alarm("The next issue or its templates changed elsewhere since this page showed them; what you typed is not saved. Copy it, then reload.", true);
        await refresh();
        return;
      }
      await refresh(document.activeElement && document.activeElement.id);
    });
  };

  // -- drag and drop -----------------------------------------------------------------------------------
  let dragged = null;
  const place = (event) => {
    const target = event.target.closest("#items .item");
    if (!target || !dragged || target === dragged) return null;
    const box = target.getBoundingClientRect();
    return { target, after: event.clientY > box.top + box.height / 2 };
  };
  const clearMarks = () => {
    for (const item of document.querySelectorAll(".drop-before, .drop-after")) {
      item.classList.remove("drop-before", "drop-after");
    }
  };
  document.addEventListener("dragstart", (event) => {
    const item = event.target.closest && event.target.closest("#items .item[draggable=true]");
    if (!item) return;
    dragged = item;
    item.classList.add("dragging");
    event.dataTransfer.effectAllowed = "move";
    event.dataTransfer.setData("text/plain", item.dataset.id);
  });
  document.addEventListener("dragover", (event) => {
    const spot = place(event);
    if (!spot) return;
    event.preventDefault();
    clearMarks();
    spot.target.classList.add(spot.after ? "drop-after" : "drop-before");
  });
  document.addEventListener("drop", (event) => {
    const spot = place(event);
    clearMarks();
    if (!spot) return;
    event.preventDefault();
    const from = Number(dragged.dataset.position);
    let to = Number(spot.target.dataset.position) + (spot.after ? 1 : 0);
    if (to > from) to -= 1; // the dragged item leaves its place first
    const form = dragged.querySelector("form[action='/desk/move']");
    if (to !== from) busy = busy.then(() => send(form, { position: String(to) }));
  });
  document.addEventListener("dragend", () => {
    clearMarks();
    dragged?.classList.remove("dragging");
    dragged = null;
  });

  // -- a send's progress, from the ledger ----------------------------------------------------------------
  let polling = null;
  const watchProgress = () => {
    const issue = desk.dataset.progress;
    if (!issue || polling) return;
    polling = setInterval(async () => {
      const response = await fetch(`/progress?issue=${issue}`);
      if (!response.ok) return;
      const now = await response.json();
      for (const [key, value] of Object.entries(now.counts)) {
        const cell = document.getElementById(`count-${key}`);
        if (cell) cell.textContent = value.toLocaleString();
      }
      const bar = document.getElementById("send-progress");
      if (bar) {
        bar.max = now.total || 1;
        bar.value = now.counts.sent + now.counts.failed + now.counts.skipped;
      }
      const rate = document.getElementById("send-rate");
      if (rate) rate.textContent = now.rate_per_minute ? `${Math.round(now.rate_per_minute).toLocaleString()}/min` : "–";
      const status = document.getElementById("send-status");
      if (status && status.textContent !== now.status) status.textContent = now.status;
      if (!now.running && now.status !== "sending") { // finished, paused, or sent by another process
        clearInterval(polling);
        polling = null;
        busy = busy.then(() => refresh());
      }
    }, 500);
  };
  watchProgress();
  count();
})();
