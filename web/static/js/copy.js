// Copy buttons and select-on-click for the one-time links staff hand out (no inline script:
// the pages' Content-Security-Policy allows only files from /static). Without JavaScript the
// field is still there to select and copy by hand.
for (const field of document.querySelectorAll('[data-select-on-click]')) {
  field.addEventListener('click', () => field.select());
}

function say(id, text) {
  const status = document.querySelector(`[data-copy-status="${id}"]`);
  if (status) status.textContent = text;
}

for (const button of document.querySelectorAll('[data-copy-from]')) {
  button.addEventListener('click', async () => {
    const id = button.dataset.copyFrom;
    const field = document.getElementById(id);
    if (!field) return;
    try {
      await navigator.clipboard.writeText(field.value);
      say(id, button.dataset.copiedText || 'Copied');
    } catch {
      field.select(); // no clipboard access here: leave it selected for Ctrl+C / long press
      say(id, 'Selected: copy it with Ctrl+C (or long-press on a phone).');
    }
  });
}
