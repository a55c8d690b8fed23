// Progressive enhancement only: every form also works without JavaScript.
"use strict";

function csrfToken() {
  const input = document.querySelector('input[name="csrf_token"]');
  return input ? input.value : "";
}

function currentType() {
  const field = document.getElementById("f-target_type");
  return field ? field.value : "";
}

// The registered target types (from the page): protocol, a new target's values, and values
// that follow another's (a port brings its security mode).
function linkedValues(types, name, value) {
  const kind = types[currentType()];
  const linked = kind && kind.linked[name];
  return (linked && linked[value.trim()]) || null;
}

function setupTargetType(types) {
  const select = document.getElementById("f-target_type");
  if (!select || select.tagName !== "SELECT") return;
  select.addEventListener("change", () => {
    offerKeyTypes();
    const kind = select.value;
    const protocol = (types[kind] || {}).protocol || "";
    document.getElementById("f-protocol").value = protocol;
    document.querySelectorAll("label[data-label]").forEach((label) => {
      label.firstChild.textContent = label.dataset.label.replace("{protocol}", protocol);
    });
    document.querySelectorAll("[data-only]").forEach((element) => {
      element.hidden = !element.dataset.only.split(" ").includes(kind);
    });
    document.querySelectorAll("[data-preset]").forEach((button) => {
      button.hidden = button.dataset.type !== kind;
    });
    document.getElementById("preset-note").hidden = true;
    // A value still blank, or still another type's default, becomes this type's default.
    const defaults = (types[kind] || {}).defaults || {};
    for (const [name, value] of Object.entries(defaults)) {
      const input = document.getElementById(`f-${name}`);
      if (!input) continue;
      const others = Object.values(types).map((t) => t.defaults[name]);
      if (!input.value || others.includes(input.value.trim())) {
        input.value = value;
        const follow = linkedValues(types, name, value) || {};
        for (const [other, linked] of Object.entries(follow)) {
          const target = document.getElementById(`f-${other}`);
          if (target) target.value = linked;
        }
      }
    }
  });
}

function setupPresets() {
  const data = document.getElementById("presets-data");
  if (!data) return;
  const parsed = JSON.parse(data.textContent);
  setupTargetType(parsed.types);
  const note = document.getElementById("preset-note");
  // Fields the last preset filled besides server/port/security (Gmail: rate_per_day…), so the
  // next preset puts back what the page started with instead of keeping another provider's limits.
  let presetFilled = [];
  document.querySelectorAll("[data-preset]").forEach((button) => {
    button.addEventListener("click", () => {
      const preset = parsed.presets[button.dataset.type][button.dataset.preset];
      const settings = preset.settings;
      for (const name of ["server", "port", "security"]) {
        const input = document.getElementById(`f-${name}`);
        if (input && name in settings) input.value = settings[name];
      }
      for (const input of presetFilled) {
        if (!(input.name in settings)) input.value = input.defaultValue;
      }
      presetFilled = [];
      const filled = [];
      for (const [name, value] of Object.entries(settings)) {
        if (["server", "port", "security"].includes(name)) continue;
        const input = document.getElementById(`f-${name}`);
        if (!input || value === null || value === undefined) continue;
        input.value = value;
        presetFilled.push(input);
        const label = document.querySelector(`label[for="f-${name}"]`);
        filled.push(`${label ? label.textContent.trim() : name} ${value}`);
      }
      const name = document.getElementById("f-display_name");
      if (!name.value) name.value = preset.label;
      const alternatives = preset.alternatives.map((a) => `${a.port} (${a.security})`).join(", ");
      note.textContent = "";
      const text = document.createElement("span");
      text.textContent = `${preset.label}: ${settings.server}, port ${settings.port} (${settings.security})` +
        (alternatives ? ` or ${alternatives}` : "") + ". " +
        (filled.length ? `Filled in: ${filled.join(", ")}. ` : "") + preset.note + " ";
      note.appendChild(text);
      if (preset.help_url) {
        const link = document.createElement("a");
        link.href = preset.help_url;
        link.rel = "noopener noreferrer";
        link.target = "_blank";
        link.textContent = "How to create one";
        note.appendChild(link);
      }
      note.hidden = false;
    });
  });
  // A port brings the matching security mode, as the CLI and API do (each type says which);
  // a mode the user chose is kept, and the form suggests instead (suggestLinked, W2 forms).
  const names = new Set(Object.values(parsed.types).flatMap((t) => Object.keys(t.linked)));
  for (const name of names) {
    const input = document.getElementById(`f-${name}`);
    if (!input) continue;
    input.addEventListener("change", () => {
      const follow = linkedValues(parsed.types, name, input.value) || {};
      for (const [other, value] of Object.entries(follow)) suggestLinked(name, input.value, other, value);
    });
  }
}

function setupAccountKeyChoice() {
  const noKeys = document.getElementById("f-no_account_keys");
  const field = document.getElementById("default-key-field");
  if (!noKeys || !field) return;
  const update = () => { field.hidden = noKeys.value === "true"; };
  noKeys.addEventListener("change", update);
  update();
}

// An account key's fields follow its type: each field names the key types that have it.
function showKeyType(select) {
  const form = select.form;
  const kind = select.value;
  form.querySelectorAll("[data-key-only]").forEach((element) => {
    element.hidden = !element.dataset.keyOnly.split(" ").includes(kind);
  });
  form.querySelectorAll("[data-required-in]").forEach((element) => {
    const required = element.dataset.requiredIn.split(" ").includes(kind);
    const mark = element.querySelector(".req");
    const input = element.querySelector("input, select, textarea");
    if (mark) mark.hidden = !required;
    if (input) input.setAttribute("aria-required", String(required));
  });
}

function setupKeyTypes() {
  document.querySelectorAll("select[data-key-type]").forEach((select) => {
    select.addEventListener("change", () => showKeyType(select));
    showKeyType(select);
  });
}

// The Add New dialog offers the key types the chosen target type accepts.
function offerKeyTypes() {
  const select = document.getElementById("k-key_type");
  if (!select) return;
  const target = currentType();
  let first = null;
  for (const option of select.options) {
    const accepted = option.dataset.targets.split(" ").includes(target);
    option.hidden = !accepted;
    option.disabled = !accepted;
    if (accepted && first === null) first = option.value;
  }
  if (select.selectedOptions.length === 0 || select.selectedOptions[0].disabled) select.value = first || "";
  showKeyType(select);
}

function setupAddNew() {
  const dialog = document.getElementById("new-key-dialog");
  const open = document.getElementById("add-new-key");
  if (!dialog || !open) return;
  const form = document.getElementById("new-key-form");
  open.addEventListener("click", () => {
    form.reset();
    offerKeyTypes();
    showKeyErrors({});
    dialog.showModal();
    document.getElementById("k-name").focus();
  });
  document.getElementById("new-key-cancel").addEventListener("click", () => dialog.close());
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = new FormData(form);
    const response = await fetch("/account-keys/new.json", {
      method: "POST", body, headers: { "X-CSRF-Token": csrfToken() }, credentials: "same-origin",
    });
    const data = await response.json();
    if (!response.ok) {
      showKeyErrors(data.errors || { "": "The key could not be saved." });
      return;
    }
    const select = document.getElementById("f-account_key");
    const option = new Option(`${data.name} (${data.username || data.type_label})`, data.id, true, true);
    option.dataset.keyType = data.type;
    select.add(option);
    select.value = data.id;
    document.getElementById("f-no_account_keys").value = "false";
    document.getElementById("default-key-field").hidden = false;
    form.reset();
    dialog.close();
    select.focus();
  });
}

function setupTokenLogin() {
  const link = document.querySelector("[data-show-login]");
  if (!link) return;
  link.addEventListener("click", (event) => {
    event.preventDefault();
    const form = document.getElementById("token-login");
    form.hidden = false;
    form.querySelector("input[name=secret]").focus();
  });
}

document.addEventListener("DOMContentLoaded", () => {
  setupPresets();
  setupAccountKeyChoice();
  setupKeyTypes();
  setupAddNew();
  setupTokenLogin();
  setupFormErrors();
  setupChosenValues();
  setupShownWhen();
});

// === W4 small screens ===
// The Main menu folds away on narrow screens (CSS decides when): a button with aria-expanded
// opens it, Escape closes it and gives the focus back to the button.
function setupMenu() {
  const nav = document.querySelector("nav.sidebar");
  const button = nav && nav.querySelector(".menu-toggle");
  if (!button) return;
  const show = (open) => {
    nav.classList.toggle("open", open);
    button.setAttribute("aria-expanded", String(open));
  };
  nav.classList.add("collapsible");
  show(false);
  button.addEventListener("click", () => show(!nav.classList.contains("open")));
  nav.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && nav.classList.contains("open")) {
      show(false);
      button.focus();
    }
  });
}

// A table or preformatted text that scrolls sideways (narrow screens) takes the keyboard focus,
// so it can be scrolled with the arrow keys.
function markScrollBoxes() {
  document.querySelectorAll("main table, main pre").forEach((box) => {
    if (box.scrollWidth > box.clientWidth) box.tabIndex = 0;
    else box.removeAttribute("tabindex");
  });
}

document.addEventListener("DOMContentLoaded", () => {
  setupMenu();
  markScrollBoxes();
  window.addEventListener("resize", markScrollBoxes);
  document.addEventListener("toggle", markScrollBoxes, true); // a <details> opened
});

// --- W1 runs: relative times kept current; a running batch's progress and totals, polled ---------

function relativeTime(moment, now) {
  const seconds = Math.round((now - moment) / 1000);
  const size = Math.abs(seconds);
  if (size < 5) return "just now";
  const units = [[86400, "day"], [3600, "h"], [60, "min"], [1, "s"]];
  for (const [unit, name] of units) {
    if (size >= unit) {
      const count = Math.floor(size / unit);
      const label = `${count} ${name}${name === "day" && count !== 1 ? "s" : ""}`;
      return seconds > 0 ? `${label} ago` : `in ${label}`;
    }
  }
  return "just now";
}

function refreshRelativeTimes() {
  const now = Date.now();
  document.querySelectorAll("time[data-relative]").forEach((time) => {
    time.textContent = relativeTime(Date.parse(time.dateTime), now);
  });
}

const RUN_BADGES = { succeeded: "badge ok", failed: "badge bad", unknown: "badge warn" };

function stepFilterLink(base, name, count) {
  const link = document.createElement("a");
  const search = new URLSearchParams(window.location.search).get("q");
  const query = new URLSearchParams();
  if (name !== "all") query.set("state", name);
  if (search) query.set("q", search);
  link.href = query.toString() ? `${base}?${query}` : base;
  const current = new URLSearchParams(window.location.search).get("state") || "all";
  if (current === name) link.setAttribute("aria-current", "page");
  if (name !== "all") {
    const badge = document.createElement("span");
    badge.className = RUN_BADGES[name] || "badge";
    badge.textContent = name;
    link.append(badge, " ");
  } else {
    link.append("all ");
  }
  const number = document.createElement("span");
  number.dataset.count = name;
  number.textContent = count.toLocaleString("en-US");
  link.append(number);
  return link;
}

function showStepTotals(base, counts, total) {
  const nav = document.getElementById("step-filter");
  if (!nav) return;
  // The same statuses as shown: only the numbers change (a focused link keeps its focus).
  const shown = [...nav.querySelectorAll("[data-count]")].map((span) => span.dataset.count);
  const names = ["all", ...Object.keys(counts)];
  if (shown.join(" ") === names.join(" ")) {
    nav.querySelectorAll("[data-count]").forEach((span) => {
      const count = span.dataset.count === "all" ? total : counts[span.dataset.count];
      span.textContent = count.toLocaleString("en-US");
    });
    return;
  }
  const links = [stepFilterLink(base, "all", total)];
  for (const [name, count] of Object.entries(counts)) links.push(stepFilterLink(base, name, count));
  nav.replaceChildren();
  links.forEach((link, n) => {
    if (n > 0) nav.append(" · ");
    nav.append(link);
  });
}

function setText(root, selector, text) {
  const element = root.querySelector(selector);
  if (element) element.textContent = text;
}

// A batch's page shows the numbers; a workflow run's page only follows its status.
function showProgress(section, data) {
  setText(section, "[data-progress-done]", data.done.toLocaleString("en-US"));
  setText(section, "[data-progress-total]", data.total.toLocaleString("en-US"));
  const percent = data.total ? Math.floor((100 * data.done) / data.total) : 0;
  setText(section, "[data-progress-percent]", String(percent));
  const bar = document.getElementById("run-progress-bar");
  if (bar) {
    bar.max = Math.max(data.total, 1);
    bar.value = data.done;
    bar.textContent = `${data.done} of ${data.total}`;
  }
  const status = document.getElementById("run-status");
  if (status) status.textContent = data.status;
  showStepTotals(window.location.pathname, data.counts, data.total);
}

async function pollRunProgress(section) {
  const active = ["queued", "running", "preparing"];
  try {
    const response = await fetch(section.dataset.progressUrl, { credentials: "same-origin" });
    if (response.ok) {
      const data = await response.json();
      showProgress(section, data);
      if (!active.includes(data.status)) {
        window.location.reload(); // finished: the steps, totals and actions as they ended
        return;
      }
    }
  } catch (error) {
    // A dropped connection: try again at the next tick.
  }
  window.setTimeout(() => pollRunProgress(section), 1000);
}

document.addEventListener("DOMContentLoaded", () => {
  if (document.querySelector("time[data-relative]")) window.setInterval(refreshRelativeTimes, 30000);
  const section = document.getElementById("run-progress");
  if (section && "running" in section.dataset) window.setTimeout(() => pollRunProgress(section), 1000);
});
/* ---- W2 forms: every error at once, suggestions instead of silent changes, fields shown where they apply ---- */

// The error summary at the top of a submitted form takes the focus; its links focus their field.
function focusField(id) {
  const input = document.getElementById(id);
  if (!input) return false;
  const details = input.closest("details");
  if (details) details.open = true;
  input.focus();
  input.scrollIntoView({ block: "center" });
  return true;
}

function linkSummary(summary) {
  summary.querySelectorAll('a[href^="#"]').forEach((link) => {
    link.addEventListener("click", (event) => {
      if (focusField(link.getAttribute("href").slice(1))) event.preventDefault();
    });
  });
}

function setupFormErrors() {
  const summary = document.getElementById("error-summary");
  if (!summary) return;
  linkSummary(summary);
  summary.focus();
}

// The Add New dialog's errors: each beside its field, and all of them in a summary at the top
// that links to each field and takes the focus.
function showKeyErrors(errors) {
  document.querySelectorAll("#new-key-form .error").forEach((p) => { p.hidden = true; p.textContent = ""; });
  document.querySelectorAll("#new-key-form .has-error").forEach((f) => f.classList.remove("has-error"));
  document.querySelectorAll("#new-key-form input, #new-key-form textarea, #new-key-form select")
    .forEach((i) => i.removeAttribute("aria-invalid"));
  const summary = document.getElementById("k-general");
  summary.textContent = "";
  const entries = Object.entries(errors);
  summary.hidden = entries.length === 0;
  if (entries.length === 0) return;
  const title = document.createElement("h3");
  title.textContent = entries.length === 1 ? "There is a problem with this key"
    : `There are ${entries.length} problems with this key`;
  const list = document.createElement("ul");
  for (const [field, message] of entries) {
    const item = document.createElement("li");
    const slot = document.getElementById(`ke-${field}`);
    const input = document.getElementById(`k-${field}`);
    if (slot && input) {
      slot.textContent = message;
      slot.hidden = false;
      input.setAttribute("aria-invalid", "true");
      input.closest(".field").classList.add("has-error");
      const link = document.createElement("a");
      link.href = `#k-${field}`;
      link.textContent = message;
      item.appendChild(link);
    } else {
      item.textContent = message;
    }
    list.appendChild(item);
  }
  summary.append(title, list);
  linkSummary(summary);
  summary.focus();
}

let applyingLinked = false; // true while the page itself changes a field (not the user's choice)

// A value the user picked by hand (or that an edited target already has) is the user's choice:
// a linked value (the port's usual security) is suggested beside it, never put over it.
function setupChosenValues() {
  const form = document.getElementById("target-form");
  if (!form) return;
  const keep = form.hasAttribute("data-keep-choices");
  form.querySelectorAll("select").forEach((select) => {
    if (keep) select.dataset.chosen = "true";
    select.addEventListener("change", (event) => {
      if (!applyingLinked) select.dataset.chosen = "true";
      const note = document.getElementById(`suggest-${select.name}`);
      if (note) note.hidden = true;
    });
  });
}

function optionText(select, value) {
  const option = [...select.options].find((o) => o.value === value);
  return option ? option.textContent.trim() : value;
}

function suggestionNote(field) {
  let note = document.getElementById(`suggest-${field.name}`);
  if (!note) {
    note = document.createElement("div");
    note.className = "note suggestion";
    note.id = `suggest-${field.name}`;
    note.setAttribute("role", "status");
    field.closest(".field").appendChild(note);
  }
  note.textContent = "";
  note.hidden = false;
  return note;
}

function applyLinked(field, value) {
  field.value = value;
  applyingLinked = true;
  try { field.dispatchEvent(new Event("change")); } finally { applyingLinked = false; }
}

function suggestLinked(name, value, other, wanted) {
  const field = document.getElementById(`f-${other}`);
  if (!field) return;
  const label = (id) => ((document.querySelector(`label[for="f-${id}"]`) || {}).textContent || id)
    .replace(/\*\s*$/, "").trim();
  const wantedText = optionText(field, wanted);
  if (field.value === wanted) {
    // Already so: no suggestion left (the note saying the page set it stays for this value).
    const note = document.getElementById(`suggest-${other}`);
    if (note && note.dataset.key !== `${value.trim()}|${wanted}|${wanted}`) note.hidden = true;
    return;
  }
  const why = `${label(name)} ${value.trim()} is usually used with ${wantedText}.`;
  const shown = document.getElementById(`suggest-${other}`);
  const key = `${value.trim()}|${wanted}|${field.value}`;
  if (shown && !shown.hidden && shown.dataset.key === key) return; // a repeated change event: keep it
  const note = suggestionNote(field);
  note.dataset.key = key;
  if (field.dataset.chosen !== "true") {
    applyLinked(field, wanted);
    note.dataset.key = `${value.trim()}|${wanted}|${wanted}`;
    note.textContent = `${label(other)} set to ${wantedText}: ${why} Choose another if your server differs.`;
    note.hidden = false;
    return;
  }
  const text = document.createElement("span");
  text.textContent = `${why} You chose ${optionText(field, field.value)}; it is kept. `;
  const apply = document.createElement("button");
  apply.type = "button";
  apply.className = "small";
  apply.textContent = `Use ${wantedText}`;
  apply.addEventListener("click", () => {
    applyLinked(field, wanted);
    note.hidden = true;
    field.focus();
  });
  note.append(text, apply);
}

// A field that applies only with another's value (STARTTLS optional: only with STARTTLS security).
function setupShownWhen() {
  const fields = document.querySelectorAll("[data-when]");
  if (fields.length === 0) return;
  const update = () => {
    fields.forEach((element) => {
      const other = document.getElementById(`f-${element.dataset.when}`);
      const typeFits = !element.dataset.only || element.dataset.only.split(" ").includes(currentType());
      element.hidden = !typeFits || !other || other.value !== element.dataset.whenValue;
    });
  };
  const names = new Set([...fields].map((element) => element.dataset.when));
  for (const name of [...names, "target_type"]) {
    const input = document.getElementById(`f-${name}`);
    if (input) input.addEventListener("change", update);
  }
  document.querySelectorAll("[data-preset]").forEach((button) => button.addEventListener("click", update));
  update();
}
