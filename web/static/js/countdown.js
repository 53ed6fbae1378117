// Counting down to a room's opening, as the server named it (in seconds from when it rendered
// the page, so the device's own clock does not matter), then asking the server again. The
// server decides. On the family invite, with the name and terms filled in, the page sends the
// form (and goes on to the room if the session is open); otherwise, and on the patient's home
// page, it reloads, which shows what is open now. If the server still says "not yet", its new
// page counts down again.
(() => {
  const countdown = document.getElementById('opens-countdown');
  if (!countdown) return;
  const waitMs = Math.max(1, Number(countdown.dataset.opensInSeconds || 0)) * 1000;
  const due = performance.now() + waitMs;
  const form = document.getElementById('family-form');
  const button = document.getElementById('family-continue');
  const TICK_MS = 1000;
  const MINUTE = 60;
  const HOUR = 3600;
  let done = false;

  const inWords = (seconds) => {
    if (seconds < MINUTE) return `${seconds} second${seconds === 1 ? '' : 's'}`;
    const minutesTotal = Math.ceil(seconds / MINUTE);
    const hours = Math.floor(minutesTotal / 60);
    const minutes = minutesTotal % 60;
    const parts = [];
    if (hours) parts.push(`${hours} hour${hours === 1 ? '' : 's'}`);
    if (minutes) parts.push(`${minutes} minute${minutes === 1 ? '' : 's'}`);
    return parts.join(' ');
  };

  const proceed = () => {
    if (done) return;
    done = true;
    countdown.textContent = 'The session is opening now…';
    if (window.vioDeviceCheck) window.vioDeviceCheck.stop();
    if (form && form.checkValidity()) {
      form.submit();
    } else {
      window.location.reload();
    }
  };

  const tick = () => {
    const left = Math.ceil((due - performance.now()) / 1000);
    if (left <= 0) {
      proceed();
      return;
    }
    countdown.textContent = `Opens in ${inWords(left)}.`;
    countdown.dataset.secondsLeft = String(left);
  };

  if (button) {
    button.addEventListener('click', (event) => {
      if (!done) {  // early: keep the form for the opening instead of sending it now
        event.preventDefault();
        if (form && !form.reportValidity()) return;
        button.textContent = 'Ready: you will join when it opens';
        button.disabled = true;
        button.dataset.ready = 'yes';
      }
    });
  }
  tick();
  setInterval(tick, TICK_MS);
  document.addEventListener('visibilitychange', tick);
})();
