// Correspond's web app: a few lines of progressive enhancement, no build, no inline script.
"use strict";

function toast(text) {
  const box = document.getElementById("toasts");
  if (!box) return;
  const item = document.createElement("div");
  item.className = "toast";
  item.textContent = text;
  box.appendChild(item);
  setTimeout(() => item.remove(), 6000);
}

// Email Preferences: saved the moment a choice is made, with a visible confirmation.
function autosave(form) {
  const status = form.querySelector("[role=status]");
  form.addEventListener("change", async () => {
    status.textContent = "Saving…";
    try {
      const answer = await fetch(form.action, {
        method: "POST",
        headers: { "Accept": "application/json" },
        body: new URLSearchParams(new FormData(form)),
        credentials: "same-origin",
      });
      if (!answer.ok) throw new Error(String(answer.status));
      const saved = await answer.json();
      status.textContent = saved.thread_order === "newest_first"
        ? "Saved: newest emails on top." : "Saved: newest emails at the bottom.";
      status.className = "confirm";
    } catch (err) {
      status.textContent = "Not saved (" + err.message + "). Reload the page and try again.";
      status.className = "error";
    }
  });
}

// The inbox: a new message (the notification stream) refreshes the list in place.
function liveInbox() {
  if (!window.EventSource) return;
  // From the newest notification when the page was rendered: nothing is missed in between
  // (a reconnect then resumes by Last-Event-ID, which the server prefers).
  const after = document.body.dataset.liveAfter || "";
  const url = "/notifications/stream" + (/^\d+$/.test(after) ? "?after=" + after : "");
  const stream = new EventSource(url);
  let pending = null;
  stream.addEventListener("notification", (event) => {
    let note = {};
    try { note = JSON.parse(event.data); } catch (_) { /* keep the refresh */ }
    if (note.subject) toast("New message: " + note.subject);
    desktopNotify(note);
    clearTimeout(pending);
    pending = setTimeout(refreshList, 150);
  });
}

async function refreshList() {
  const answer = await fetch(location.href, { credentials: "same-origin" });
  if (!answer.ok) return;
  const page = new DOMParser().parseFromString(await answer.text(), "text/html");
  for (const id of ["threads", "unread-badge"]) {
    const fresh = page.getElementById(id);
    const here = document.getElementById(id);
    if (fresh && here) here.replaceWith(fresh);
  }
}

// --- Full Email Sync: live backfill progress (settings_sync) ---------------------------------
// Each .sync-progress box polls GET /accounts/{name}/progress (the API, by the session
// cookie) once a second while the account syncs (every 10 s when it is stopped) and redraws
// itself, folder by folder, until the backfill is complete; then it says so and stops. The
// wording matches _sync_progress.html.

function progressSummary(p) {
  const folders = p.folders.length;
  const finished = p.folders.filter((f) => f.complete).length;
  if (p.complete) {
    return "Backfill complete: " + p.done + " messages from " + folders
      + (folders === 1 ? " folder." : " folders.");
  }
  if (!folders) return "Waiting for the sync to list the folders.";
  return "Backfilling folder by folder: " + finished + "/" + folders + " folders done, "
    + p.done + "/" + p.total + (p.total_known ? "" : "+") + " messages.";
}

function progressRow(f) {
  const item = document.createElement("li");
  item.dataset.folder = String(f.folder_id);
  if (f.complete) item.className = "complete";
  const name = document.createElement("span");
  name.className = "name";
  name.textContent = f.name;
  const bar = document.createElement("progress");
  bar.value = f.done;
  bar.max = f.total || 1;
  const count = document.createElement("span");
  count.className = "count";
  count.textContent = f.done + "/" + (f.total === null ? "?" : f.total);
  item.append(name, " ", bar, " ", count);
  return item;
}

function showProgress(box, p) {
  box.querySelector(".progress-summary").textContent = progressSummary(p);
  const overall = box.querySelector(".overall progress");
  overall.max = p.total || 1;
  overall.value = p.done;
  box.querySelector(".overall .count").textContent =
    p.done + "/" + p.total + (p.total_known ? "" : "+");
  box.querySelector("ul.folders").replaceChildren(...p.folders.map(progressRow));
  const state = box.closest("[data-account]")?.querySelector("[data-live-state]");
  if (state) {
    state.textContent = p.state_message;
    state.dataset.state = p.state;
  }
  if (p.complete) box.dataset.complete = "1";
}

function syncProgress(box) {
  if (box.dataset.complete) return;
  const poll = async () => {
    let answer;
    try {
      answer = await fetch(box.dataset.progress, {
        headers: { "Accept": "application/json" },
        credentials: "same-origin",
      });
    } catch (_) {
      setTimeout(poll, 5000);  // the server restarting: try again a little later
      return;
    }
    if (!answer.ok) {
      if (answer.status >= 500) setTimeout(poll, 5000);
      return;  // gone, or no longer visible: stop
    }
    const p = await answer.json();
    showProgress(box, p);
    // Once a second while a sync works on it; a stopped or waiting account, every 10 s.
    const working = p.state === "connecting" || p.state === "backfilling";
    if (!p.complete) setTimeout(poll, working ? 1000 : 10000);
  };
  poll();
}

// --- inbox filters and desktop notifications (issue 11) ---------------------------------

// The inbox's filter form: applied the moment a select changes; empty choices ("Any") are
// left out of the URL.
function autosubmitFilters(form) {
  const go = () => {
    const params = new URLSearchParams();
    for (const [name, value] of new FormData(form)) {
      if (value !== "") params.append(name, value);
    }
    const query = params.toString();
    location.assign(form.getAttribute("action") + (query ? "?" + query : ""));
  };
  form.addEventListener("change", go);
  form.addEventListener("submit", (event) => { event.preventDefault(); go(); });
}

// "Enable desktop notifications": the browser's permission, asked on a click (never unasked).
function desktopNotifyButton(button) {
  if (!("Notification" in window)) return;
  const show = () => {
    const state = Notification.permission;
    button.classList.remove("hidden");
    button.disabled = state !== "default";
    button.dataset.permission = state;
    button.textContent = state === "granted" ? "Desktop notifications on"
      : state === "denied" ? "Desktop notifications blocked by the browser"
      : "Enable desktop notifications";
  };
  show();
  button.addEventListener("click", async () => {
    try { await Notification.requestPermission(); } catch (_) { /* old callback form */ }
    show();
  });
}

// A new message as a desktop notification, once permission is granted: text only (the
// subject, and who sent it), never markup or a remote icon.
function desktopNotify(note) {
  if (!("Notification" in window) || Notification.permission !== "granted") return;
  const sender = note.sender ? (note.sender.name || note.sender.email || "") : "";
  try {
    const shown = new Notification(String(note.subject || "(no subject)"), {
      body: sender ? "From " + sender : "",
      tag: "correspond-" + String(note.id || ""),
    });
    if (note.thread_id) {
      shown.onclick = () => { window.focus(); location.assign("/conversation/" + Number(note.thread_id)); };
    }
  } catch (_) { /* a browser that shows them only from a service worker */ }
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("form[data-autosave]").forEach(autosave);
  if (document.body.dataset.live === "inbox") liveInbox();
  document.querySelectorAll(".sync-progress[data-progress]").forEach(syncProgress);
  document.querySelectorAll("form[data-autosubmit]").forEach(autosubmitFilters);
  const notifyButton = document.getElementById("desktop-notify");
  if (notifyButton) desktopNotifyButton(notifyButton);
});
