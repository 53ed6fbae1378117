// Idle sign-out, seen from the page: warn shortly before the server signs this browser out for
// inactivity, and go to the start page once it has. Any request to the server counts as
// activity; "Stay signed in" makes one by reloading the page.
const body = document.body;
const logoff = Number(body.dataset.idleLogoffSeconds || 0) * 1000;
const warning = Number(body.dataset.idleWarningSeconds || 0) * 1000;
const banner = document.getElementById('idle-warning');
if (logoff > 0 && banner) {
  setTimeout(() => { banner.hidden = false; }, Math.max(0, logoff - warning));
  setTimeout(() => { window.location.assign('/'); }, logoff + 1000);
  const stay = document.getElementById('idle-stay');
  if (stay) stay.addEventListener('click', () => window.location.reload());
}
