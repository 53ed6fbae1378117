// A camera and microphone check with no connection to any room: a local preview and a
// microphone level, until the person stops it or leaves the page. Exposes
// window.vioDeviceCheck.stop() so the page can release the devices before it moves on.
(() => {
  const start = document.getElementById('device-check-start');
  const stopButton = document.getElementById('device-check-stop');
  const video = document.getElementById('device-preview');
  const meterBox = document.getElementById('mic-meter');
  const meter = document.getElementById('mic-level');
  const message = document.getElementById('device-message');
  if (!start || !video) return;
  let stream = null;
  let audioContext = null;
  let frame = 0;

  const say = (text) => { if (message) message.textContent = text; };

  const stop = () => {
    if (frame) cancelAnimationFrame(frame);
    frame = 0;
    if (stream) stream.getTracks().forEach((track) => track.stop());
    stream = null;
    if (audioContext) audioContext.close();
    audioContext = null;
    video.srcObject = null;
    video.hidden = true;
    if (meterBox) meterBox.hidden = true;
    start.hidden = false;
    if (stopButton) stopButton.hidden = true;
  };

  const showLevel = (source) => {
    audioContext = new AudioContext();
    const analyser = audioContext.createAnalyser();
    analyser.fftSize = 512;
    audioContext.createMediaStreamSource(source).connect(analyser);
    const samples = new Uint8Array(analyser.fftSize);
    const draw = () => {
      analyser.getByteTimeDomainData(samples);
      let peak = 0;
      for (const sample of samples) peak = Math.max(peak, Math.abs(sample - 128) / 128);
      meter.value = peak;
      meter.dataset.peak = String(Math.max(Number(meter.dataset.peak || 0), peak));
      frame = requestAnimationFrame(draw);
    };
    draw();
  };

  const problem = (error) => {
    if (error && error.name === 'NotAllowedError') {
      return 'Your browser did not allow the camera or microphone. Allow them for this site '
        + '(the camera icon in the address bar) and try again.';
    }
    if (error && error.name === 'NotFoundError') {
      return 'No camera or microphone was found. Plug one in, or try another device.';
    }
    return 'The camera or microphone could not be started. Close other apps that use them and '
      + 'try again.';
  };

  start.addEventListener('click', async () => {
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      say('This browser cannot use a camera here. Try an up-to-date Chrome, Edge, Firefox or Safari.');
      return;
    }
    say('Starting your camera and microphone…');
    try {
      stream = await navigator.mediaDevices.getUserMedia({ audio: true, video: true });
    } catch (error) {
      say(problem(error));
      return;
    }
    video.srcObject = stream;
    video.hidden = false;
    if (meterBox && meter && stream.getAudioTracks().length) {
      meterBox.hidden = false;
      showLevel(stream);
    }
    start.hidden = true;
    if (stopButton) stopButton.hidden = false;
    say('If you can see yourself and the bar moves when you speak, you are ready.');
  });
  if (stopButton) stopButton.addEventListener('click', () => { stop(); say('Check stopped.'); });
  window.addEventListener('pagehide', stop);
  window.vioDeviceCheck = { stop };
})();
