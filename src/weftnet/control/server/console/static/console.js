// weftnet admin console: live machine status, confirmations, copy buttons. No framework.
"use strict";

const POLL_MS = 5000;

function pollMachines(table) {
  const url = table.dataset.live;
  async function refresh() {
    try {
      const answer = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
      if (answer.status === 401) { window.location.reload(); return; }
      if (!answer.ok) return;
      for (const machine of await answer.json()) {
        const row = table.querySelector(`tr[data-node-id="${machine.id}"]`);
        if (!row) continue;
        const status = row.querySelector('[data-field="status"]');
        status.textContent = machine.status;
        status.className = `status ${machine.status}`;
        row.querySelector('[data-field="last_seen"]').textContent = machine.last_seen;
        row.querySelector('[data-field="expiry"]').textContent = machine.expiry;
        const approval = row.querySelector('[data-field="approval"]');
        if (approval && !machine.needs_approval) approval.remove();
      }
    } catch (e) {
      // The server is restarting or the network is down: try again at the next tick.
    }
  }
  window.setInterval(refresh, POLL_MS);
}

function confirmForms() {
  for (const form of document.querySelectorAll("form[data-confirm]")) {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  }
}

function copyButtons() {
  for (const button of document.querySelectorAll("button[data-copy]")) {
    button.addEventListener("click", async () => {
      const text = document.querySelector(button.dataset.copy).textContent;
      try {
        await navigator.clipboard.writeText(text);
        button.textContent = "Copied";
      } catch (e) {
        window.getSelection().selectAllChildren(document.querySelector(button.dataset.copy));
      }
    });
  }
}

// Filters go into the URL; empty ones are left out, so the URL stays short to share.
function tidyFilters() {
  for (const form of document.querySelectorAll("form.filters")) {
    form.addEventListener("submit", () => {
      for (const field of form.querySelectorAll("input, select")) {
        if (field.name && !field.value) field.disabled = true;
      }
    });
  }
}

document.addEventListener("DOMContentLoaded", () => {
  tidyFilters();
  const machines = document.querySelector("table[data-live]");
  if (machines) pollMachines(machines);
  confirmForms();
  copyButtons();
});
