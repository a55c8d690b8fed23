// Progressive enhancement only: every form also works without JavaScript.
"use strict";

function csrfToken() {
  const input = document.querySelector('input[name="csrf_token"]');
  return input ? input.value : "";
}

const SECURITY_BY_PORT = {
  smtp: { "465": "ssl", "587": "starttls", "25": "starttls" },
  imap: { "993": "ssl", "143": "starttls" },
  pop3: { "995": "ssl", "110": "starttls" },
};
const DEFAULT_PORT = { smtp: "587", imap: "993", pop3: "995" };

function currentType() {
  const field = document.getElementById("f-target_type");
  return field ? field.value : "smtp";
}

function setupTargetType(protocols) {
  const select = document.getElementById("f-target_type");
  if (!select || select.tagName !== "SELECT") return;
  select.addEventListener("change", () => {
    const kind = select.value;
    const protocol = protocols[kind] || "SMTP";
    document.getElementById("f-protocol").value = protocol;
    for (const name of ["server", "port"]) {
      const label = document.querySelector(`label[for="f-${name}"]`);
      label.firstChild.textContent = `${protocol} ${name === "server" ? "Server" : "Port"}`;
    }
    document.querySelectorAll("[data-only]").forEach((element) => {
      element.hidden = !element.dataset.only.split(" ").includes(kind);
    });
    document.querySelectorAll("[data-preset]").forEach((button) => {
      button.hidden = button.dataset.type !== kind;
    });
    document.getElementById("preset-note").hidden = true;
    const port = document.getElementById("f-port");
    if (!port.value || Object.values(DEFAULT_PORT).includes(port.value.trim())) {
      port.value = DEFAULT_PORT[kind];
      document.getElementById("f-security").value = SECURITY_BY_PORT[kind][port.value];
    }
  });
}

function setupPresets() {
  const data = document.getElementById("presets-data");
  if (!data) return;
  const parsed = JSON.parse(data.textContent);
  setupTargetType(parsed.protocols);
  const note = document.getElementById("preset-note");
  // Fields the last preset filled besides server/port/security (Gmail: rate_per_day…), so the
  // next preset puts back what the page started with instead of keeping another provider's limits.
  let presetFilled = [];
  document.querySelectorAll("[data-preset]").forEach((button) => {
    button.addEventListener("click", () => {
      const preset = parsed.presets[button.dataset.type][button.dataset.preset];
      const settings = preset.settings;
      document.getElementById("f-server").value = settings.server;
      document.getElementById("f-port").value = settings.port;
      document.getElementById("f-security").value = settings.security;
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
  // Port changes bring the matching security mode, as the CLI and API do.
  const port = document.getElementById("f-port");
  port.addEventListener("change", () => {
    const security = SECURITY_BY_PORT[currentType()][port.value.trim()];
    if (security) document.getElementById("f-security").value = security;
  });
}

function setupAccountKeyChoice() {
  const noKeys = document.getElementById("f-no_account_keys");
  const field = document.getElementById("default-key-field");
  if (!noKeys || !field) return;
  const update = () => { field.hidden = noKeys.value === "true"; };
  noKeys.addEventListener("change", update);
  update();
}

function showKeyErrors(errors) {
  document.querySelectorAll("#new-key-form .error").forEach((p) => { p.hidden = true; p.textContent = ""; });
  document.querySelectorAll("#new-key-form input").forEach((i) => i.removeAttribute("aria-invalid"));
  const general = document.getElementById("k-general");
  general.hidden = true;
  let focused = false;
  for (const [field, message] of Object.entries(errors)) {
    const slot = document.getElementById(`ke-${field}`);
    const input = document.getElementById(`k-${field}`);
    if (slot && input) {
      slot.textContent = message;
      slot.hidden = false;
      input.setAttribute("aria-invalid", "true");
      if (!focused) { input.focus(); focused = true; }
    } else {
      general.textContent = message;
      general.hidden = false;
    }
  }
}

function setupAddNew() {
  const dialog = document.getElementById("new-key-dialog");
  const open = document.getElementById("add-new-key");
  if (!dialog || !open) return;
  const form = document.getElementById("new-key-form");
  open.addEventListener("click", () => {
    form.reset();
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
    const option = new Option(`${data.name} (${data.username})`, data.id, true, true);
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
  setupAddNew();
  setupTokenLogin();
});
