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
  document.querySelectorAll("form[data-autosubmit]").forEach(autosubmitFilters);
  const notifyButton = document.getElementById("desktop-notify");
  if (notifyButton) desktopNotifyButton(notifyButton);
});
