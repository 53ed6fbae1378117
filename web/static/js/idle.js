// Idle sign-out, seen from the page: warn shortly before the server signs this browser out for
// inactivity, and go to the start page once it has. Any request to the server counts as
// activity; "Stay signed in" makes one in the background (a HEAD request for this page, so
// nothing typed into a form is lost) and starts the count again; if that fails, it reloads.
// (The room page has no idle warning: its live connection keeps the sign-in alive.)
const body = document.body;
const logoff = Number(body.dataset.idleLogoffSeconds || 0) * 1000;
const warning = Number(body.dataset.idleWarningSeconds || 0) * 1000;
const banner = document.getElementById('idle-warning');
if (logoff > 0 && banner) {
  const timers = { warn: 0, out: 0 };
  const start = () => {
    clearTimeout(timers.warn);
    clearTimeout(timers.out);
    banner.hidden = true;
    timers.warn = setTimeout(() => { banner.hidden = false; }, Math.max(0, logoff - warning));
    timers.out = setTimeout(() => { window.location.assign('/'); }, logoff + 1000);
  };
  start();
  const stay = document.getElementById('idle-stay');
  if (stay) {
    stay.addEventListener('click', async () => {
      try {
        const response = await fetch(window.location.href, { method: 'HEAD', credentials: 'same-origin', cache: 'no-store', redirect: 'manual' });
        if (response.ok) {
          start();
          return;
        }
      } catch {
        // fall through: the reload shows whether the sign-in still holds
      }
      window.location.reload();
    });
  }
}
