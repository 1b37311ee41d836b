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

// --- The composer (web/composer.py): attachments with their sizes and the send limit, "Send
// later" in the browser's time zone, To/Cc/Bcc suggestions from contacts. Times shown local.

function formatSize(bytes) {
  if (bytes < 1024) return bytes + " bytes";
  if (bytes < 1048576) return (bytes / 1024).toFixed(1) + " KB";
  return (bytes / 1048576).toFixed(1) + " MB";
}

// Files add up across choices (each with its size and Remove); over the limit the form will
// not submit and says why (the server checks again).
function composerAttachments(input) {
  const limit = Number(input.dataset.limit) || 0;
  const list = document.getElementById("attachment-list");
  const check = document.getElementById("attachments-check");
  if (!list || !check) return;
  let kept = new DataTransfer();
  const key = (f) => [f.name, f.size, f.lastModified].join("\u0000");
  function keep(files) {
    kept = new DataTransfer();
    files.forEach((f) => kept.items.add(f));
    input.files = kept.files;
    render();
  }
  function render() {
    list.replaceChildren();
    const files = Array.from(kept.files);
    let total = 0;
    files.forEach((file, index) => {
      total += file.size;
      const item = document.createElement("li");
      item.className = "file";
      const name = document.createElement("span");
      name.className = "name";
      name.textContent = file.name;
      const size = document.createElement("span");
      size.className = "size";
      size.textContent = formatSize(file.size);
      const remove = document.createElement("button");
      remove.type = "button";
      remove.className = "remove";
      remove.textContent = "Remove";
      remove.setAttribute("aria-label", "Remove " + file.name);
      remove.addEventListener("click", () => {
        keep(files.filter((_, i) => i !== index));
        input.focus();
      });
      item.append(name, " ", size, " ", remove);
      list.appendChild(item);
    });
    if (files.length > 1) {
      const sum = document.createElement("li");
      sum.className = "total";
      sum.textContent = files.length + " files, " + formatSize(total) + " in all";
      list.appendChild(sum);
    }
    const message = limit && total > limit
      ? "The attachments are " + formatSize(total) + "; the limit is " + formatSize(limit) +
        " in all. Remove some to send."
      : "";
    input.setCustomValidity(message);
    check.textContent = message;
    check.hidden = !message;
  }
  // Saved into a draft (composerDrafts): the draft keeps them now, listed as its files.
  input.addEventListener("composer:saved", () => keep([]));
  input.addEventListener("change", () => {
    const have = new Set(Array.from(kept.files).map(key));
    const added = Array.from(input.files).filter((f) => !have.has(key(f)));
    keep(Array.from(kept.files).concat(added));
  });
}

// "Send later": the chosen local time goes with the browser's offset for that date.
function composerSendLater(form) {
  const field = document.getElementById("field-send-at");
  const offset = document.getElementById("field-tz-offset");
  const button = document.getElementById("send-button");
  if (!field || !offset || !button) return;
  const label = () => { button.textContent = field.value ? "Schedule" : "Send"; };
  field.addEventListener("input", label);
  field.addEventListener("change", label);
  label();
  form.addEventListener("submit", () => {
    const when = field.value ? new Date(field.value) : null;
    offset.value = when && !isNaN(when) ? String(when.getTimezoneOffset()) : "";
  });
}

// To/Cc/Bcc: contacts matching the address being typed (after the last comma), as a listbox:
// Up/Down to move, Enter or Tab to take one, Escape to close. The datalist stays for no script.
function composerSuggest(input) {
  const url = input.dataset.suggest;
  input.removeAttribute("list");
  const box = document.createElement("ul");
  box.id = input.id + "-suggestions";
  box.className = "suggestions";
  box.setAttribute("role", "listbox");
  box.hidden = true;
  (input.closest("label") || input).after(box);
  input.setAttribute("role", "combobox");
  input.setAttribute("aria-autocomplete", "list");
  input.setAttribute("aria-controls", box.id);
  input.setAttribute("aria-expanded", "false");
  let items = [];
  let active = -1;
  let asked = 0;
  let timer = null;
  const token = () => {
    const value = input.value;
    const cut = Math.max(value.lastIndexOf(","), value.lastIndexOf(";")) + 1;
    return { head: value.slice(0, cut), tail: value.slice(cut).trim() };
  };
  const shown = (item) => {
    if (!item.name) return item.email;
    const name = /[",;<>@()[\]:\\]/.test(item.name)
      ? '"' + item.name.replace(/["\\]/g, "\\$&") + '"' : item.name;
    return name + " <" + item.email + ">";
  };
  function close() {
    asked += 1;
    box.hidden = true;
    box.replaceChildren();
    items = [];
    active = -1;
    input.setAttribute("aria-expanded", "false");
    input.removeAttribute("aria-activedescendant");
  }
  function highlight(index) {
    active = index;
    Array.from(box.children).forEach((li, i) => li.setAttribute("aria-selected", String(i === index)));
    if (index >= 0) input.setAttribute("aria-activedescendant", box.children[index].id);
  }
  function choose(index) {
    const item = items[index];
    if (!item) return;
    const head = token().head.trimEnd();
    input.value = (head ? head + " " : "") + shown(item) + ", ";
    close();
    input.focus();
  }
  async function lookup() {
    const tail = token().tail;
    const mine = ++asked;
    if (!tail) { close(); return; }
    let found = [];
    try {
      const answer = await fetch(url + "?q=" + encodeURIComponent(tail), {
        credentials: "same-origin", headers: { "Accept": "application/json" },
      });
      if (!answer.ok) return;
      found = (await answer.json()).items || [];
    } catch (_) {
      return;
    }
    if (mine !== asked) return; // the field changed meanwhile
    if (!found.length) { close(); return; }
    items = found;
    box.replaceChildren();
    items.forEach((item, i) => {
      const li = document.createElement("li");
      li.id = box.id + "-" + i;
      li.setAttribute("role", "option");
      li.textContent = shown(item);
      li.addEventListener("mousedown", (event) => { event.preventDefault(); choose(i); });
      box.appendChild(li);
    });
    box.hidden = false;
    input.setAttribute("aria-expanded", "true");
    highlight(0);
  }
  input.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(lookup, 120);
  });
  input.addEventListener("keydown", (event) => {
    if (box.hidden) {
      if (event.key === "ArrowDown" && token().tail) { event.preventDefault(); lookup(); }
      return;
    }
    if (event.key === "ArrowDown") highlight((active + 1) % items.length);
    else if (event.key === "ArrowUp") highlight((active - 1 + items.length) % items.length);
    else if ((event.key === "Enter" || (event.key === "Tab" && !event.shiftKey)) && active >= 0) choose(active);
    else if (event.key === "Escape") close();
    else return;
    event.preventDefault();
  });
  input.addEventListener("blur", close);
}

// <time data-local="datetime|time">: shown in the browser's time zone (the page says UTC).
function localTimes() {
  document.querySelectorAll("time[data-local]").forEach((el) => {
    const when = new Date(el.dateTime);
    if (isNaN(when)) return;
    const two = (n) => String(n).padStart(2, "0");
    const time = two(when.getHours()) + ":" + two(when.getMinutes());
    el.title = el.textContent;
    el.textContent = el.dataset.local === "time"
      ? time + ":" + two(when.getSeconds())
      : when.getFullYear() + "-" + two(when.getMonth() + 1) + "-" + two(when.getDate()) + " " + time;
  });
}

// --- The composer's HTML body and drafts (web/composer.py, web/compose_drafts.py): a
// contenteditable editor (Bold, Italic, Link, Bulleted list; Ctrl+B, Ctrl+I, Ctrl+K) whose
// HTML goes in the hidden "html" field (sanitised on the server before sending); images
// pasted, dropped or chosen go as inline parts ("inline" files, content ids in "inline_cid")
// referenced as cid:. Drafts: saved every few seconds while typing through /compose/draft,
// the CSRF token in the X-CSRF-Token header.

const COMPOSER_IMAGE_TYPES = ["image/png", "image/jpeg", "image/gif", "image/webp"];

function composerContentId() {
  const bytes = new Uint8Array(8);
  crypto.getRandomValues(bytes);
  return "img-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("") +
    "@inline.correspond";
}

function composerLinkTarget(value) {
  const url = value.trim();
  if (!url) return "";
  if (/^(https?:|mailto:)/i.test(url)) return url;
  if (/^[a-z][a-z0-9+.-]*:/i.test(url)) return ""; // javascript:, data: ...: not a link
  return (url.includes("@") && !url.includes("/") ? "mailto:" : "https://") + url;
}

function composerEditor(form) {
  const rich = document.getElementById("rich");
  const editor = document.getElementById("editor");
  const html = document.getElementById("field-html");
  const textarea = document.getElementById("field-text");
  const inlineInput = document.getElementById("field-inline");
  const cidBox = document.getElementById("inline-cids");
  const picker = document.getElementById("inline-image");
  const sizeNote = document.getElementById("inline-size");
  const attachments = document.getElementById("field-attachments");
  if (!rich || !editor || !html || !textarea || !inlineInput || !cidBox || !window.DataTransfer) {
    return null;
  }
  const limit = attachments ? Number(attachments.dataset.limit) || 0 : 0;
  const pending = new Map(); // content id -> File not yet saved in a draft
  const saved = new Map(); // content id -> the draft's file id
  // A draft's images are shown from its files: their content ids come back from the list.
  document.querySelectorAll("#draft-inline li").forEach((li) => {
    saved.set(li.dataset.cid, li.dataset.fileId);
    editor.querySelectorAll("img").forEach((img) => {
      if (img.getAttribute("src") === li.dataset.url) img.dataset.cid = li.dataset.cid;
    });
  });
  // The plain text typed without script (or a template's text) starts the editor.
  if (!editor.textContent.trim() && !editor.querySelector("img") && textarea.value.trim()) {
    textarea.value.replace(/\r\n/g, "\n").split("\n").forEach((line, i) => {
      if (i) editor.appendChild(document.createElement("br"));
      editor.appendChild(document.createTextNode(line));
    });
  }
  rich.hidden = false;
  document.getElementById("text-label").hidden = true;

  let range = null;
  function inEditor() {
    const sel = document.getSelection();
    return sel && sel.rangeCount && editor.contains(sel.getRangeAt(0).commonAncestorContainer)
      ? sel : null;
  }
  function remember() {
    const sel = inEditor();
    if (sel) range = sel.getRangeAt(0).cloneRange();
  }
  document.addEventListener("selectionchange", remember);
  // Back to where the caret was before a control took the focus (the link's address).
  function restore() {
    if (inEditor()) return;
    editor.focus();
    const sel = document.getSelection();
    if (range && sel) {
      sel.removeAllRanges();
      sel.addRange(range);
    }
  }
  function run(command, value) {
    restore();
    document.execCommand(command, false, value);
    editor.dispatchEvent(new Event("input", { bubbles: true }));
  }
  function sizes() {
    let total = 0;
    pending.forEach((file) => { total += file.size; });
    const files = attachments ? Array.from(attachments.files).reduce((n, f) => n + f.size, 0) : 0;
    const over = limit && total + files > limit;
    sizeNote.textContent = total
      ? "Inline images: " + formatSize(total) + (limit ? " (with the attachments, at most " +
        formatSize(limit) + " in all)" : "") : "";
    sizeNote.className = over ? "error field-error" : "hint";
    if (picker) {
      picker.setCustomValidity(over ? "The images and attachments are over the limit of " +
        formatSize(limit) + ": remove some to send." : "");
    }
  }
  function insertImage(file) {
    if (!COMPOSER_IMAGE_TYPES.includes(file.type)) {
      toast(file.name + " is not an image this editor can send inline.");
      return;
    }
    const cid = composerContentId();
    pending.set(cid, file);
    const reader = new FileReader();
    reader.addEventListener("load", () => {
      const img = document.createElement("img");
      img.src = String(reader.result);
      img.alt = file.name;
      img.dataset.cid = cid;
      restore();
      const sel = document.getSelection();
      if (range && sel && sel.rangeCount) {
        const here = sel.getRangeAt(0);
        here.deleteContents();
        here.insertNode(img);
        here.setStartAfter(img);
        here.collapse(true);
        sel.removeAllRanges();
        sel.addRange(here);
      } else {
        editor.appendChild(img);
      }
      editor.dispatchEvent(new Event("input", { bubbles: true }));
      sizes();
    });
    reader.readAsDataURL(file);
  }

  // Formatting buttons (mousedown would take the selection away: prevented).
  rich.querySelectorAll(".toolbar button[data-command]").forEach((button) => {
    button.addEventListener("mousedown", (event) => event.preventDefault());
    button.addEventListener("click", () => {
      if (button.dataset.command === "createLink") openLink();
      else run(button.dataset.command);
    });
  });
  const entry = document.getElementById("link-entry");
  const linkUrl = document.getElementById("link-url");
  function openLink() {
    remember();
    entry.hidden = false;
    linkUrl.value = "";
    linkUrl.focus();
  }
  function addLink() {
    const url = composerLinkTarget(linkUrl.value);
    entry.hidden = true;
    if (!url) { restore(); return; }
    restore();
    const sel = document.getSelection();
    if (sel && sel.rangeCount && sel.getRangeAt(0).collapsed) {
      const words = document.createTextNode(linkUrl.value.trim());
      const here = sel.getRangeAt(0);
      here.insertNode(words);
      here.selectNode(words);
      sel.removeAllRanges();
      sel.addRange(here);
      range = here.cloneRange();
    }
    run("createLink", url);
  }
  document.getElementById("link-add").addEventListener("click", addLink);
  document.getElementById("link-cancel").addEventListener("click", () => { entry.hidden = true; restore(); });
  linkUrl.addEventListener("keydown", (event) => {
    if (event.key === "Enter") { event.preventDefault(); addLink(); }
    if (event.key === "Escape") { event.preventDefault(); entry.hidden = true; restore(); }
  });
  editor.addEventListener("keydown", (event) => {
    if (!(event.ctrlKey || event.metaKey) || event.altKey) return;
    const key = event.key.toLowerCase();
    if (key === "b") run("bold");
    else if (key === "i") run("italic");
    else if (key === "k") openLink();
    else return;
    event.preventDefault();
  });
  editor.addEventListener("paste", (event) => {
    const files = Array.from((event.clipboardData && event.clipboardData.files) || [])
      .filter((f) => f.type.startsWith("image/"));
    if (!files.length) return; // text and HTML paste as usual (the server sanitises)
    event.preventDefault();
    files.forEach(insertImage);
  });
  editor.addEventListener("drop", (event) => {
    const files = Array.from((event.dataTransfer && event.dataTransfer.files) || [])
      .filter((f) => f.type.startsWith("image/"));
    if (!files.length) return;
    event.preventDefault();
    files.forEach(insertImage);
  });
  if (picker) {
    picker.addEventListener("change", () => {
      Array.from(picker.files).forEach(insertImage);
      picker.value = "";
    });
  }
  if (attachments) attachments.addEventListener("change", sizes);
  editor.addEventListener("input", sizes);

  // The editor's HTML into the form: the images by cid:, new ones as inline files, the
  // draft's ones still shown kept (keep_file).
  function prepare() {
    const clone = editor.cloneNode(true);
    const inline = new DataTransfer();
    cidBox.replaceChildren();
    const seen = new Set();
    clone.querySelectorAll("img").forEach((img) => {
      const cid = img.dataset.cid;
      if (!cid) return; // an image pasted by URL: the server's sanitizer decides
      img.setAttribute("src", "cid:" + cid);
      img.removeAttribute("data-cid");
      if (seen.has(cid)) return;
      seen.add(cid);
      const field = document.createElement("input");
      field.type = "hidden";
      if (pending.has(cid)) {
        inline.items.add(pending.get(cid));
        field.name = "inline_cid";
        field.value = cid;
      } else if (saved.has(cid)) {
        field.name = "keep_file";
        field.value = saved.get(cid);
      } else {
        return;
      }
      cidBox.appendChild(field);
    });
    inlineInput.files = inline.files; // in the order of their inline_cid fields
    // Nothing but lines of text (no formatting, link, list or image): sent as plain text.
    const plain = Array.from(clone.querySelectorAll("*"))
      .every((el) => ["BR", "DIV", "P"].includes(el.tagName) && !el.attributes.length);
    const empty = !clone.textContent.trim() && !clone.querySelector("img");
    html.value = empty || plain ? "" : clone.innerHTML;
    textarea.value = plain && !empty ? editor.innerText.replace(/\n+$/, "") : "";
  }
  // A draft saved: its inline files are its own now (sent again only as kept files).
  function savedFiles(files) {
    files.forEach((f) => {
      if (f.content_id && pending.has(f.content_id)) {
        pending.delete(f.content_id);
        saved.set(f.content_id, String(f.id));
      }
    });
    sizes();
  }
  form.addEventListener("submit", prepare);
  sizes();
  return { prepare, savedFiles };
}

function composerDraftFile(f) {
  const item = document.createElement("li");
  item.className = "file saved";
  item.dataset.fileId = String(f.id);
  const keep = document.createElement("input");
  keep.type = "hidden";
  keep.name = "keep_file";
  keep.value = String(f.id);
  const name = document.createElement("span");
  name.className = "name";
  name.textContent = f.filename;
  const size = document.createElement("span");
  size.className = "size";
  size.textContent = formatSize(f.size);
  const remove = document.createElement("button");
  remove.type = "button";
  remove.className = "remove";
  remove.textContent = "Remove";
  remove.setAttribute("aria-label", "Remove " + f.filename);
  item.append(keep, name, " ", size, " ", remove);
  return item;
}

function composerDrafts(form, editor) {
  const url = form.dataset.draftSave;
  const seconds = Number(form.dataset.draftSaveSeconds) || 10;
  const status = document.getElementById("draft-status");
  const idField = document.getElementById("field-draft-id");
  const list = document.getElementById("draft-files");
  const attachments = document.getElementById("field-attachments");
  const token = form.querySelector("input[name=csrf]");
  if (!url || !status || !idField || !list || !token) return;
  list.addEventListener("click", (event) => {
    const button = event.target.closest("button.remove");
    if (button) { button.closest("li").remove(); dirty = true; }
  });
  let dirty = false;
  let saving = null; // the save under way
  let leaving = false;
  form.addEventListener("input", () => { dirty = true; });
  form.addEventListener("change", () => { dirty = true; });
  form.addEventListener("submit", (event) => {
    if (saving) {
      // A save under way may be making the draft: the form goes once it has its id (so the
      // send removes that draft, and Save draft saves over it).
      event.preventDefault();
      const by = event.submitter;
      saving.then(() => form.requestSubmit(by));
      return;
    }
    leaving = true;
  });
  function save() {
    if (saving || leaving) return;
    saving = saveNow().finally(() => { saving = null; });
  }
  async function saveNow() {
    dirty = false;
    editor.prepare();
    const body = new FormData(form);
    body.delete("action");
    status.textContent = "Saving draft…";
    try {
      const answer = await fetch(url, {
        method: "POST",
        body,
        credentials: "same-origin",
        headers: { "Accept": "application/json", "X-CSRF-Token": token.value },
      });
      const saved = await answer.json().catch(() => ({}));
      if (!answer.ok) throw new Error(saved.detail || String(answer.status));
      idField.value = String(saved.id);
      editor.savedFiles(saved.files);
      const shown = new Set(Array.from(list.children).map((li) => li.dataset.fileId));
      saved.files.filter((f) => !f.content_id && !shown.has(String(f.id)))
        .forEach((f) => list.appendChild(composerDraftFile(f)));
      if (attachments) attachments.dispatchEvent(new Event("composer:saved"));
      const now = new Date();
      const two = (n) => String(n).padStart(2, "0");
      status.textContent = "Draft saved " + two(now.getHours()) + ":" + two(now.getMinutes()) +
        ":" + two(now.getSeconds()) + ".";
      status.className = "hint saved";
    } catch (err) {
      dirty = true;
      status.textContent = "Draft not saved: " + err.message;
      status.className = "error";
    }
  }
  setInterval(() => { if (dirty) save(); }, seconds * 1000);
}

function composer() {
  const form = document.getElementById("compose-form");
  if (!form) return;
  const files = document.getElementById("field-attachments");
  if (files && window.DataTransfer) composerAttachments(files);
  composerSendLater(form);
  form.querySelectorAll("input[data-suggest]").forEach(composerSuggest);
  const editor = composerEditor(form);
  if (editor) composerDrafts(form, editor);
}

document.addEventListener("DOMContentLoaded", () => {
  composer();
  localTimes();
});

// --- CRM record forms (web/crm_forms.py) ---------------------------------------------------
// An activity's time is shown and typed in the browser's zone: the server renders it in UTC,
// this shows it local, and a submit sends the offset for that date beside it (tz_offset).
function crmLocalTime(form) {
  const field = form.querySelector("input[name=at][data-utc]");
  const offset = form.querySelector("input[name=tz_offset]");
  if (!field || !offset) return;
  const two = (n) => String(n).padStart(2, "0");
  if (field.value) {
    const when = new Date(field.value + ":00Z");
    if (!isNaN(when)) {
      field.value = when.getFullYear() + "-" + two(when.getMonth() + 1) + "-" +
        two(when.getDate()) + "T" + two(when.getHours()) + ":" + two(when.getMinutes());
    }
  }
  form.addEventListener("submit", () => {
    const when = field.value ? new Date(field.value) : null;
    offset.value = when && !isNaN(when) ? String(when.getTimezoneOffset()) : "";
  });
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("form.crm-form").forEach(crmLocalTime);
});
