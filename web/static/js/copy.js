// Copy buttons and select-on-click for the one-time links staff hand out (no inline script:
// the pages' Content-Security-Policy allows only files from /static).
for (const field of document.querySelectorAll('[data-select-on-click]')) {
  field.addEventListener('click', () => field.select());
}
for (const button of document.querySelectorAll('[data-copy-from]')) {
  button.addEventListener('click', () => {
    const field = document.getElementById(button.dataset.copyFrom);
    if (field) navigator.clipboard.writeText(field.value);
  });
}
