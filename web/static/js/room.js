// vio room page: pre-join check, waiting room, the room itself, and the closing screens.
import { RoomConnection, DEFAULT_CAPS, videoConstraints, audioConstraints } from './protocol.js';

const $ = (id) => document.getElementById(id);

const config = readConfig();
const isTherapist = config.role === 'therapist';

const state = {
  conn: null,
  stream: new MediaStream(), // our own tracks: preview, then what we publish
  want: { audio: true, video: true }, // pre-join choices
  you: null,
  participants: new Map(), // id → participant
  streams: new Map(), // participant id → {audio, video} remote MediaStreams
  waiting: [],
  endsAt: null,
  clock: null,
  screen: 'prejoin',
  left: false,
  pendingChats: [], // our own messages not yet echoed back by the server
  unread: 0,
  removeTarget: null,
  mediaErrors: {}, // kind → the last getUserMedia error for that kind
  mediaCheck: Promise.resolve(), // the camera/microphone request in progress
  session: null, // the session summary from welcome or waiting
  locked: false,
  sideRooms: new Map(), // therapist id → ids of the participants in that side room
  mySideRoom: null, // {withIds} while we are in a side room
  expected: [], // therapists: the roster, {name, role, status}
  keptOut: [], // therapists: refused attempts to join, newest first
  quality: { timer: null, lost: 0, received: 0 },
};

function readConfig() {
  const node = document.getElementById('room-config');
  let cfg = {};
  try {
    cfg = JSON.parse(node ? node.textContent : '{}') || {};
  } catch (err) {
    console.error('vio: room-config is not valid JSON', err);
  }
  return {
    wsUrl: cfg.wsUrl || '',
    sessionTitle: cfg.sessionTitle || '',
    role: cfg.role || 'patient',
    displayName: cfg.displayName || '',
    iceServers: Array.isArray(cfg.iceServers) ? cfg.iceServers : [],
    endedUrl: cfg.endedUrl || '',
    attendanceUrl: cfg.attendanceUrl || '',
    emergencyNumber: cfg.emergencyNumber || '',
  };
}

// ---- small DOM helpers ------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === false || value == null) continue;
    if (key === 'class') node.className = value;
    else if (key === 'text') node.textContent = value;
    else node.setAttribute(key, value === true ? '' : value);
  }
  node.append(...children);
  return node;
}

function announce(text) {
  const region = $('announcer');
  region.textContent = '';
  // A fresh text node after a tick makes screen readers read repeated messages too.
  setTimeout(() => { region.textContent = text; }, 50);
}

function showScreen(name) {
  state.screen = name;
  for (const screen of document.querySelectorAll('.screen')) {
    screen.hidden = screen.id !== `screen-${name}`;
  }
  const heading = $(`screen-${name}`).querySelector('h1, h2');
  if (heading) heading.focus({ preventScroll: true });
}

function setPressed(button, pressed) {
  button.setAttribute('aria-pressed', pressed ? 'true' : 'false');
}

function initials(name) {
  const parts = String(name || '?').trim().split(/\s+/).filter(Boolean);
  return parts.slice(0, 2).map((p) => p[0].toUpperCase()).join('') || '?';
}

function roleLabel(role) {
  return { therapist: 'Therapist', family: 'Guest' }[role] || '';
}

function formatDuration(totalSeconds) {
  const h = Math.floor(totalSeconds / 3600);
  const m = Math.floor((totalSeconds % 3600) / 60);
  const s = totalSeconds % 60;
  const two = (n) => String(n).padStart(2, '0');
  return h > 0 ? `${h}:${two(m)}:${two(s)}` : `${m}:${two(s)}`;
}

function formatClock(date) {
  return date.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
}

function playMedia(media) {
  const p = media.play && media.play();
  if (p && p.catch) {
    p.catch((err) => {
      if (err.name === 'NotAllowedError') $('sound-button').hidden = false;
    });
  }
}

// ---- local media ------------------------------------------------------------

const DEVICE_WORDS = { audio: 'microphone', video: 'camera' };

function localTrack(kind) {
  return (kind === 'audio' ? state.stream.getAudioTracks() : state.stream.getVideoTracks())[0] || null;
}

function stopLocalTracks(kind = null) {
  for (const track of state.stream.getTracks()) {
    if (kind && track.kind !== kind) continue;
    track.stop();
    state.stream.removeTrack(track);
  }
}

/** One getUserMedia call; `audio`/`video` are false, true, or a device id. */
async function getMedia(audio, video) {
  const build = (strict) => ({
    audio: audio ? audioConstraints(audio === true ? null : audio) : false,
    video: video ? (strict ? videoConstraints(DEFAULT_CAPS, video === true ? null : video)
      : (video === true ? true : { deviceId: { exact: video } })) : false,
  });
  try {
    return { stream: await navigator.mediaDevices.getUserMedia(build(true)) };
  } catch (err) {
    if (err.name !== 'OverconstrainedError' || !video) return { error: err };
    try {
      return { stream: await navigator.mediaDevices.getUserMedia(build(false)) };
    } catch (err2) {
      return { error: err2 };
    }
  }
}

/** Camera and microphone together; if that fails, each on its own so one problem doesn't block the other. */
async function acquireMedia() {
  const both = await getMedia(true, true);
  if (both.stream) return { tracks: both.stream.getTracks(), errors: {} };
  if (both.error.name === 'NotAllowedError' && !(await anyPermissionGranted())) {
    // Don't pester with more prompts: the person said no (or closed the prompt).
    return { tracks: [], errors: { audio: both.error, video: both.error } };
  }
  const audio = await getMedia(true, false);
  const video = await getMedia(false, true);
  const tracks = [...(audio.stream ? audio.stream.getTracks() : []), ...(video.stream ? video.stream.getTracks() : [])];
  return { tracks, errors: { audio: audio.error, video: video.error } };
}

async function anyPermissionGranted() {
  if (!navigator.permissions || !navigator.permissions.query) return true; // can't tell: try each
  const granted = async (name) => {
    try {
      return (await navigator.permissions.query({ name })).state === 'granted';
    } catch {
      return true; // this browser can't tell for this device kind
    }
  };
  return (await granted('microphone')) || (await granted('camera'));
}

function addLocalTrack(track) {
  track.enabled = state.want[track.kind];
  state.stream.addTrack(track);
  track.addEventListener('ended', () => {
    // e.g. a headset unplugged: drop the track, recompute our state and tell the server.
    state.stream.removeTrack(track);
    state.mediaErrors[track.kind] = { name: 'NotFoundError' };
    if (state.conn) state.conn.setMedia({});
    else showMediaProblems();
    refreshLocalState();
  });
}

function problemText(kinds, err) {
  const word = kinds.map((k) => DEVICE_WORDS[k]).join(' and ');
  const [it, itIs] = kinds.length > 1 ? ['them', 'They may be'] : ['it', 'It may be'];
  switch (err && err.name) {
    case 'NotAllowedError':
    case 'SecurityError':
      return `Your browser is not allowed to use the ${word}. To use ${it}, allow access in your browser's settings for this site (often the icon next to the address bar), then choose “Try again”.`;
    case 'NotFoundError':
    case 'OverconstrainedError':
      return `No ${kinds.map((k) => DEVICE_WORDS[k]).join(' or ')} was found.`;
    case 'NotReadableError':
    case 'AbortError':
      return `The ${word} could not be started. ${itIs} in use by another app; close that app, then choose “Try again”.`;
    default:
      return `The ${word} could not be started.`;
  }
}

function joinHint() {
  const hasAudio = !!localTrack('audio');
  const hasVideo = !!localTrack('video');
  if (hasAudio && hasVideo) return '';
  if (hasAudio) return 'You can still join with sound only.';
  if (hasVideo) return 'You can still join: others will see you but not hear you. You can use the chat to write.';
  return 'You can still join without camera and microphone, and use the chat to write.';
}

/** [{kinds: ['audio', 'video'], error}]: one sentence per distinct cause. */
function groupByCause(errors) {
  const groups = [];
  for (const kind of ['audio', 'video']) {
    const error = errors[kind];
    if (!error) continue;
    const same = groups.find((g) => g.error.name === error.name);
    if (same) same.kinds.push(kind);
    else groups.push({ kinds: [kind], error });
  }
  return groups;
}

function showMediaProblems() {
  const errors = {};
  for (const kind of ['audio', 'video']) {
    if (!localTrack(kind)) errors[kind] = state.mediaErrors[kind] || { name: 'NotFoundError' };
  }
  const lines = groupByCause(errors).map(({ kinds, error }) => problemText(kinds, error));
  const hint = joinHint();
  if (hint) lines.push(hint);
  const box = $('media-message');
  box.replaceChildren(...lines.map((line) => el('p', { text: line })));
  box.hidden = lines.length === 0;
  $('retry-media').hidden = lines.length === 0;
}

// ---- pre-join screen --------------------------------------------------------

/** Starts (or retries) the camera and microphone check; Join waits for it. */
function startPreview() {
  state.mediaCheck = runPreview().catch((err) => console.error('vio: media check failed', err));
  return state.mediaCheck;
}

async function runPreview() {
  stopLocalTracks();
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    state.mediaErrors = { audio: { name: 'SecurityError' }, video: { name: 'SecurityError' } };
    showMediaProblems();
    refreshLocalState();
    return;
  }
  $('retry-media').disabled = true;
  const { tracks, errors } = await acquireMedia();
  tracks.forEach(addLocalTrack);
  $('retry-media').disabled = false;
  state.mediaErrors = errors;
  showMediaProblems();
  refreshLocalState();
  await refreshDeviceLists();
}

function refreshLocalState() {
  const preview = $('preview');
  if (state.screen === 'prejoin' && preview.srcObject !== state.stream) preview.srcObject = state.stream;
  for (const kind of ['audio', 'video']) {
    const box = $(`prejoin-${kind}`);
    box.disabled = !localTrack(kind);
    box.checked = !!localTrack(kind) && state.want[kind];
  }
  $('preview-off').hidden = !!localTrack('video') && state.want.video;
  startMeter(localTrack('audio'));
  if (state.conn) {
    updateMediaButtons();
    updateLocalTile();
  }
}

async function refreshDeviceLists() {
  if (!navigator.mediaDevices || !navigator.mediaDevices.enumerateDevices) return;
  let devices = [];
  try {
    devices = await navigator.mediaDevices.enumerateDevices();
  } catch {
    return;
  }
  fillDeviceSelect('audio', devices.filter((d) => d.kind === 'audioinput'));
  fillDeviceSelect('video', devices.filter((d) => d.kind === 'videoinput'));
}

function fillDeviceSelect(kind, devices) {
  const select = $(`${kind}-source`);
  const track = localTrack(kind);
  const current = track && track.getSettings ? track.getSettings().deviceId : null;
  const word = DEVICE_WORDS[kind];
  const options = devices.map((d, i) => new Option(d.label || `${word[0].toUpperCase()}${word.slice(1)} ${i + 1}`, d.deviceId, false, d.deviceId === current));
  select.replaceChildren(...options);
  select.closest('.field').hidden = devices.length === 0 || !devices.some((d) => d.deviceId);
}

function switchDevice(kind, deviceId) {
  const previous = state.mediaCheck;
  state.mediaCheck = previous.then(() => openDevice(kind, deviceId))
    .catch((err) => console.error('vio: device switch failed', err));
}

async function openDevice(kind, deviceId) {
  stopLocalTracks(kind); // phones often can't open two cameras at once
  const result = await getMedia(kind === 'audio' ? deviceId : false, kind === 'video' ? deviceId : false);
  if (result.stream) result.stream.getTracks().forEach(addLocalTrack);
  state.mediaErrors[kind] = result.error;
  showMediaProblems();
  refreshLocalState();
}

function onPrejoinToggle(kind) {
  state.want[kind] = $(`prejoin-${kind}`).checked;
  const track = localTrack(kind);
  if (track) track.enabled = state.want[kind];
  refreshLocalState();
}

// Microphone level meter (pre-join only).
const meter = { ctx: null, source: null, raf: 0, track: null };

function startMeter(track) {
  if (state.screen !== 'prejoin' || state.conn || track === meter.track) return;
  stopMeter(false);
  meter.track = track;
  const AudioCtx = window.AudioContext || window.webkitAudioContext;
  if (!track || !AudioCtx) return;
  meter.ctx = meter.ctx || new AudioCtx();
  meter.ctx.resume().catch(() => {});
  meter.source = meter.ctx.createMediaStreamSource(new MediaStream([track]));
  const analyser = meter.ctx.createAnalyser();
  analyser.fftSize = 512;
  meter.source.connect(analyser);
  const samples = new Uint8Array(analyser.fftSize);
  const bar = $('mic-level-bar');
  const draw = () => {
    analyser.getByteTimeDomainData(samples);
    let sum = 0;
    for (const s of samples) sum += ((s - 128) / 128) ** 2;
    const level = track.enabled ? Math.min(1, Math.sqrt(sum / samples.length) * 4) : 0;
    bar.style.width = `${Math.round(level * 100)}%`;
    meter.raf = requestAnimationFrame(draw);
  };
  draw();
}

function stopMeter(closeContext = true) {
  cancelAnimationFrame(meter.raf);
  if (meter.source) meter.source.disconnect();
  meter.source = null;
  meter.track = null;
  $('mic-level-bar').style.width = '0%';
  if (closeContext && meter.ctx) {
    meter.ctx.close().catch(() => {});
    meter.ctx = null;
  }
}

function setUpPrejoin() {
  $('prejoin-audio').addEventListener('change', () => onPrejoinToggle('audio'));
  $('prejoin-video').addEventListener('change', () => onPrejoinToggle('video'));
  $('audio-source').addEventListener('change', (e) => switchDevice('audio', e.target.value));
  $('video-source').addEventListener('change', (e) => switchDevice('video', e.target.value));
  $('retry-media').addEventListener('click', () => startPreview());
  $('join-button').addEventListener('click', onJoinClick);
  // Browsers may start the meter's AudioContext suspended until the first click.
  document.addEventListener('pointerdown', () => { if (meter.ctx) meter.ctx.resume().catch(() => {}); });
  navigator.mediaDevices?.addEventListener?.('devicechange', () => {
    if (state.screen === 'prejoin') refreshDeviceLists();
  });
  if (config.role === 'family') {
    $('name-field').hidden = false;
    $('display-name').value = config.displayName;
  }
  $('joining-as').textContent = config.displayName ? endSentence(`You are joining as ${config.displayName}`) : '';
  $('joining-as').hidden = config.role === 'family' || !config.displayName;
}

async function onJoinClick() {
  if (!config.wsUrl) {
    showNotice('This page is missing its connection details. Please reload it.', 'error');
    return;
  }
  const button = $('join-button');
  button.disabled = true;
  button.textContent = 'Joining…';
  await state.mediaCheck; // join with the camera and microphone, not before they are ready
  stopMeter();
  const name = config.role === 'family' ? $('display-name').value.trim() : '';
  const conn = new RoomConnection({ wsUrl: config.wsUrl, iceServers: config.iceServers, name: name || null });
  state.conn = conn;
  wireConnection(conn);
  conn.join(state.stream);
}

// ---- connection events ------------------------------------------------------

function wireConnection(conn) {
  const handlers = {
    status: onStatus,
    welcome: onWelcome,
    waiting: onWaiting,
    refused: onRefused,
    ended: onEnded,
    'participant-joined': (d) => upsertParticipant(d.participant),
    'participant-left': (d) => removeParticipant(d.participant_id),
    track: onTrack,
    'track-removed': onTrackRemoved,
    speaking: onSpeaking,
    'media-state': onMediaState,
    'waiting-list': onWaitingList,
    chat: onChat,
    time: (d) => { if (d.endsAt) state.endsAt = d.endsAt; renderTime(); },
    warning: onWarning,
    moderated: onModerated,
    'room-state': onRoomState,
    'safety-card': onSafetyCard,
    'side-room': onSideRoom,
    'side-room-state': onSideRoomState,
    'video-paused': onVideoPaused,
    'join-refused': onJoinRefused,
    roster: onRoster,
    'media-connection': onMediaConnection,
    error: onError,
  };
  for (const [type, handler] of Object.entries(handlers)) {
    conn.addEventListener(type, (event) => handler(event.detail || {}));
  }
}

function onRoomState({ locked }) {
  state.locked = !!locked;
  $('lock-badge').hidden = !state.locked;
  const button = $('lock-button');
  if (!button) return;
  button.setAttribute('aria-pressed', locked ? 'true' : 'false');
  button.textContent = locked ? 'Unlock room' : 'Lock room';
}

/** Where to send help: at home, the street address on the patient's record; elsewhere, the check-in's. */
function safetyPlace(card) {
  const where = card.location;
  if (!where) return 'Not checked in for this session';
  if (where.location === 'home') {
    const address = (card.home_address || '').trim() || (where.address || '').trim();
    return address ? `At home: ${address}` : 'At home (no street address on file)';
  }
  return [where.address, where.city, where.state].filter(Boolean).join(', ') || 'Not given';
}

/** A phone number a phone can dial with one tap. */
function callLink(number) {
  return el('a', { href: `tel:${String(number).replace(/[^0-9+*#]/g, '')}`, text: number });
}

function onSafetyCard(card) {
  const contact = card.emergency_contact || {};
  $('safety-name').textContent = card.name || '';
  $('safety-location').textContent = safetyPlace(card);
  $('safety-phone').replaceChildren(card.phone ? callLink(card.phone) : 'None on file');
  $('safety-contact').replaceChildren(...(contact.name || contact.phone
    ? [contact.name || '', contact.name && contact.phone ? ' · ' : '', contact.phone ? callLink(contact.phone) : '']
    : ['None on file']));
  $('safety-emergency').replaceChildren(card.emergency_number ? callLink(card.emergency_number) : 'Not set for this program');
  const dialog = $('safety-dialog');
  if (typeof dialog.showModal === 'function') dialog.showModal();
  else dialog.setAttribute('open', '');
}

function nameOf(id, fallback = 'someone') {
  return state.participants.get(id)?.name || fallback;
}

function listNames(names) {
  if (names.length <= 1) return names[0] || '';
  return `${names.slice(0, -1).join(', ')} and ${names[names.length - 1]}`;
}

/** "with Dana R." ends a sentence without a second full stop. */
function endSentence(text) {
  return /[.!?]$/.test(text) ? text : `${text}.`;
}

/** We were moved into a side room (or back): say with whom, and that the group can't hear. */
function onSideRoom({ space, with_ids: withIds }) {
  const ids = Array.isArray(withIds) ? withIds : [];
  state.mySideRoom = space ? { withIds: ids } : null;
  document.body.classList.toggle('in-side-room', !!space);
  const text = space
    ? `${endSentence(`You are in a private room with ${listNames(ids.map((id) => nameOf(id))) || 'your therapist'}`)} The group can’t see or hear you.`
    : 'You are back with the group.';
  announce(text);
  renderSideRoomBanner();
  for (const id of state.participants.keys()) updateTile(id);
}

/** The server holds back these videos because our connection cannot carry them (none: all back). */
function onVideoPaused({ participant_ids: ids = [] }) {
  const paused = new Set(ids);
  const before = document.querySelectorAll('.tile.paused-bandwidth').length;
  for (const tile of document.querySelectorAll('.tile[data-participant-id]')) {
    const on = paused.has(tile.dataset.participantId);
    tile.classList.toggle('paused-bandwidth', on);
    if (on && !tile.querySelector('.tile-paused-bandwidth')) {
      tile.querySelector('.tile-bar')?.append(
        el('span', { class: 'tile-paused-bandwidth', text: 'Video paused — weak connection' }));
    }
  }
  if (ids.length && !before) announce('Some video is paused because your connection is weak. You can still hear everyone.');
  else if (!ids.length && before) announce('Video is back.');
}

/** Everyone: these participants went into a side room with a therapist (or came back). */
function onSideRoomState({ participant_ids: ids = [], active, therapist_id: therapistId }) {
  const key = therapistId || ids[0];
  if (!key) return;
  if (active) state.sideRooms.set(key, [...ids]);
  else state.sideRooms.delete(key);
  for (const id of ids) {
    const p = state.participants.get(id);
    if (p) upsertParticipant({ ...p, side_room: !!active });
  }
  const mine = state.you && ids.includes(state.you.id);
  if (!mine && !active && therapistId) announce(`${nameOf(therapistId, 'The therapist')} is back with the group.`);
  renderSideRoomBanner();
}

function renderSideRoomBanner() {
  const banner = $('side-room-banner');
  const lines = [];
  let back = null;
  if (state.mySideRoom) {
    const names = listNames(state.mySideRoom.withIds.map((id) => nameOf(id))) || 'your therapist';
    lines.push(`${endSentence(`You are in a private room with ${names}`)} The group can’t see or hear you.`);
    if (isTherapist && state.mySideRoom.withIds.length) back = state.mySideRoom.withIds[0];
  } else {
    for (const [therapistId, ids] of state.sideRooms) {
      const holders = [...state.participants.values()]
        .filter((p) => p.role === 'therapist' && !ids.includes(p.id) && !p.side_room);
      const who = nameOf(therapistId, 'The therapist');
      const holding = holders.some((p) => p.isLocal) ? 'You are holding the group.'
        : holders.length ? `${listNames(holders.map((p) => p.name || 'A co-therapist'))} ${holders.length > 1 ? 'are' : 'is'} holding the group.`
          : `${who} will be back shortly.`;
      lines.push(`${who} has stepped out for a private talk. ${endSentence(holding)}`);
    }
  }
  banner.replaceChildren(...lines.map((line) => el('p', { text: line })));
  if (back) {
    const button = el('button', { type: 'button', class: 'secondary', text: 'Back to the group' });
    button.addEventListener('click', () => state.conn && state.conn.send({ type: 'main-room', participant_id: back }));
    banner.append(button);
  }
  banner.hidden = lines.length === 0;
}

// ---- therapists: who was kept out, and who is expected but not here yet -------------------

const KEPT_OUT_WHY = {
  'room-locked': 'the room is locked',
  'room-full': 'the room is full',
  removed: 'they were removed from this session',
  'invite-in-use': 'their invitation is open on another device',
  'check-in-needed': 'they have not checked in yet',
};

function onJoinRefused(d) {
  const at = Date.parse(d.at);
  const entry = { name: d.name || 'Someone', role: d.role, code: d.code, why: KEPT_OUT_WHY[d.code] || d.message || d.code, at: Number.isFinite(at) ? new Date(at) : new Date() };
  state.keptOut.unshift(entry);
  const text = `${entry.name} tried to join but was kept out: ${entry.why}.`;
  showNotice(text, 'warning');
  announce(text);
  renderKeptOut();
}

function renderKeptOut() {
  const list = $('refused-list');
  list.replaceChildren(...state.keptOut.map((e) => el('li', { class: 'refused-person' },
    el('span', { class: 'refused-name', text: e.name }),
    el('span', { class: 'muted', text: [roleLabel(e.role) || (e.role === 'patient' ? 'Patient' : ''), e.why, formatClock(e.at)].filter(Boolean).join(' · ') }))));
  $('refused-empty').hidden = state.keptOut.length > 0;
}

function onRoster({ expected }) {
  state.expected = Array.isArray(expected) ? expected : [];
  renderRoster();
}

function renderRoster() {
  const missing = state.expected.filter((e) => e.status === 'not-here');
  $('roster-list').replaceChildren(...missing.map((e) => el('li', { class: 'roster-person' },
    el('span', { class: 'roster-name', text: e.name }),
    e.role === 'family' ? el('span', { class: 'muted', text: ' · Guest' }) : '')));
  $('roster-empty').hidden = missing.length > 0;
  $('roster-empty').textContent = state.expected.length ? 'Everyone expected is here.' : 'No one else is expected.';
  $('roster-count').textContent = missing.length ? `(${missing.length})` : '';
}

function onStatus({ state: status }) {
  const banner = $('status');
  const text = {
    connecting: 'Connecting…',
    reconnecting: 'The connection was interrupted. Reconnecting…',
  }[status] || '';
  banner.textContent = text;
  banner.classList.toggle('is-visible', !!text);
  if (status === 'closed' && !['refused', 'ended'].includes(state.screen)) {
    if (state.left) showEnded('You have left the session.', '', true);
    else showEnded('You are no longer connected.', 'The connection to the session was closed.', true);
  }
}

/** A peer connection that never came up: say so, instead of leaving black tiles. */
function onMediaConnection({ state: media, turnRefused }) {
  const shown = document.getElementById('network-blocked');
  if (media === 'connected') {
    if (shown) shown.remove();
    return;
  }
  if (media !== 'failed' || shown) return;
  const text = 'Your network blocks video calls, so you can’t see or hear the group right now. '
    + 'Try another network (a home Wi‑Fi or your phone’s hotspot), or call your care team.'
    + (turnRefused ? ' (The video relay turned this page away; reloading the page may help.)' : '');
  showNotice(text, 'error');
  const notices = $('notices').children;
  notices[notices.length - 1].id = 'network-blocked';
  announce(text);
}

function sessionTimes(session) {
  const start = Date.parse(session?.starts_at);
  const end = Date.parse(session?.ends_at);
  if (!Number.isFinite(start) || !Number.isFinite(end)) return '';
  const zone = session.timezone || undefined;
  try {
    const day = new Date(start).toLocaleDateString([], { weekday: 'long', month: 'long', day: 'numeric', timeZone: zone });
    const from = new Date(start).toLocaleTimeString([], { hour: 'numeric', minute: '2-digit', timeZone: zone });
    const to = new Date(end).toLocaleTimeString([], { hour: 'numeric', minute: '2-digit', timeZone: zone, timeZoneName: 'short' });
    return `${day}, ${from} – ${to}`;
  } catch {
    return '';
  }
}

function onWaiting(d) {
  state.session = d.session || state.session;
  const session = state.session || {};
  if (session.title) $('waiting-session').querySelector('strong').textContent = session.title;
  $('waiting-time').textContent = sessionTimes(session);
  const therapist = $('waiting-therapist');
  const known = 'therapist_present' in session;
  therapist.textContent = session.therapist_present ? 'Your therapist is here.' : 'Your therapist hasn’t joined yet.';
  therapist.classList.toggle('present', !!session.therapist_present);
  therapist.hidden = !known;
  if (known) {
    $('waiting-text').textContent = session.therapist_present ? 'They will let you in shortly.' : 'You will be let in when they arrive.';
  }
  showScreen('waiting');
  // The server's sentence says the same as the lines above when it says whether a therapist is in.
  const extra = !known && d.message && d.message !== $('waiting-text').textContent ? d.message : '';
  $('waiting-message').textContent = extra;
  $('waiting-preview').srcObject = localTrack('video') ? state.stream : null;
}

function onWelcome(d) {
  state.you = d.you;
  state.endsAt = d.endsAt;
  state.session = d.session || state.session;
  onRoomState({ locked: !!d.session?.locked });
  if (Array.isArray(d.expected)) onRoster({ expected: d.expected });
  startQuality();
  const keep = new Set([d.you.id, ...(d.participants || []).map((p) => p.id)]);
  for (const id of [...state.participants.keys()]) {
    if (!keep.has(id)) removeParticipant(id);
  }
  $('waiting-preview').srcObject = null;
  $('preview').srcObject = null;
  if (state.screen !== 'room') showScreen('room');
  fitRoom();
  upsertParticipant({ ...d.you, ...state.conn.media }, true);
  for (const p of d.participants || []) {
    if (p.id !== d.you.id) upsertParticipant(p);
  }
  // Coming in while a side room is on: the group's word for it, from who is marked away.
  const away = (d.participants || []).filter((p) => p.side_room);
  state.sideRooms.clear();
  for (const t of away.filter((p) => p.role === 'therapist')) state.sideRooms.set(t.id, away.map((p) => p.id));
  renderSideRoomBanner();
  updateMediaButtons();
  startClock();
}

// Each refusal's screen: a headline that says what happened, what comes next, and whether trying
// again can help (codes: docs/protocol.md, sentences: vio/errors.py).
const REFUSAL_SCREENS = {
  removed: { title: 'The therapist has asked you to leave this session', next: 'You can’t rejoin this session. Your therapist will follow up with you.', retry: false },
  denied: { title: 'The therapist couldn’t let you in this time', next: 'Your therapist will follow up with you about this session.', retry: false },
  'room-locked': { title: 'This session is closed to newcomers', next: 'Please contact your care team. You can try again in case the therapist opens it.', retry: true },
  'room-full': { title: 'This session is full right now', next: 'You can try again in a few minutes, or contact your care team.', retry: true },
  'too-early': { title: 'Your session hasn’t opened yet', next: 'Come back a few minutes before it starts.', retry: true },
  'session-ended': { title: 'This session has ended', next: 'Your other sessions are on your page.', retry: false },
  'session-cancelled': { title: 'This session was cancelled', next: 'Your other sessions are on your page.', retry: false },
  'check-in-needed': { title: 'Please check in first', next: 'Tell us where you are right now, then join.', retry: true, retryLabel: 'Check in' },
  'not-signed-in': { title: 'You are not signed in', next: 'Open the personal link your care team sent you, or sign in.', retry: false },
  'signed-out': { title: 'You have been signed out', next: 'Open the personal link your care team sent you, or sign in, to come back.', retry: false },
  'not-on-roster': { title: 'This session isn’t on your schedule', next: 'Please check with your care team.', retry: false },
  'consent-missing': { title: 'We need your consent first', next: 'Please contact your care team.', retry: false },
  'no-such-session': { title: 'We can’t find this session', next: 'Please check with your care team.', retry: false },
  'invite-in-use': { title: 'This invitation is open on another device', next: 'Close it there, then try again.', retry: true },
  'invite-expired': { title: 'This invitation can’t be used', next: 'Please ask the person who invited you for a new one.', retry: false },
  'invite-revoked': { title: 'This invitation can’t be used', next: 'Please ask the person who invited you for a new one.', retry: false },
  'consent-revoked': { title: 'This invitation can’t be used', next: 'Please ask the person who invited you for a new one.', retry: false },
  'wrong-session': { title: 'This invitation is for another session', next: 'Please check the link you were sent.', retry: false },
  'invite-unknown': { title: 'This invitation can’t be used', next: 'Please ask the person who invited you for a new one.', retry: false },
  'invite-malformed': { title: 'This link is not complete', next: 'Please copy the whole link you were sent and open it again.', retry: false },
  'media-unavailable': { title: 'The video service is busy', next: 'Please try again in a minute.', retry: true },
};

function onRefused(d) {
  stopLocalTracks();
  stopClock();
  stopQuality();
  const screen = REFUSAL_SCREENS[d.code] || { title: 'We couldn’t let you in', next: 'If you think this is a mistake, please contact your therapist.', retry: true };
  $('refused-title').textContent = screen.title;
  $('refused-message').textContent = d.message || 'You can’t join this session right now.';
  $('refused-next').textContent = screen.next;
  const crisis = $('refused-crisis');
  crisis.textContent = config.emergencyNumber
    ? `If you are in danger or need help right now, call ${config.emergencyNumber}.` : '';
  crisis.hidden = isTherapist || !config.emergencyNumber;
  $('retry-button').hidden = !screen.retry;
  $('retry-button').textContent = screen.retryLabel || 'Try again';
  $('refused-link').hidden = !config.endedUrl;
  if (config.endedUrl) $('refused-link').href = config.endedUrl;
  showScreen('refused');
}

function onEnded(d) {
  showEnded('This session has ended.', d.message || '', false);
}

function showEnded(title, message, rejoin) {
  stopLocalTracks();
  stopClock();
  $('ended-title').textContent = title;
  const detail = message && message !== title ? message : '';
  $('ended-message').textContent = detail;
  $('ended-message').hidden = !detail;
  $('rejoin-button').hidden = !rejoin;
  $('ended-link').hidden = !config.endedUrl;
  if (config.endedUrl) $('ended-link').href = config.endedUrl;
  $('attendance-link').hidden = !config.attendanceUrl;
  if (config.attendanceUrl) $('attendance-link').href = config.attendanceUrl;
  stopQuality();
  showScreen('ended');
}

function onError(d) {
  if (d.code === 'closed') return; // shown by the 'closed' status
  showNotice(d.message ? `That didn’t work: ${d.message}` : 'Something didn’t work. Please try again.', 'error');
}

function onWarning(d) {
  const minutes = Number(d.minutes_left);
  const fallback = minutes > 0 ? `The session ends in ${minutes} minute${minutes === 1 ? '' : 's'}.` : 'The session ends soon.';
  $('warning-text').textContent = d.message || fallback;
  $('warning-banner').hidden = false;
}

function onModerated(d) {
  const text = {
    mute: 'A therapist muted your microphone. You can turn it back on with the Unmute button when you are ready.',
    'stop-video': 'A therapist turned off your camera. You can turn it back on with the Start video button.',
  }[d.action];
  if (text) showNotice(text, 'info');
  updateMediaButtons();
  updateLocalTile();
}

// ---- notices ----------------------------------------------------------------

function showNotice(text, kind = 'info') {
  const item = el('div', { class: `notice notice-${kind}` },
    el('p', { text }),
    el('button', { type: 'button', class: 'notice-close', 'aria-label': 'Dismiss', text: '×' }));
  item.querySelector('button').addEventListener('click', () => item.remove());
  $('notices').append(item);
  if (kind !== 'error') setTimeout(() => item.remove(), 15000);
}

// ---- participants and tiles ---------------------------------------------------

function tileFor(id) {
  return document.querySelector(`.tile[data-participant-id="${CSS.escape(id)}"]`);
}

function upsertParticipant(p, isLocal = false) {
  if (!p || !p.id) return;
  const known = state.participants.get(p.id);
  state.participants.set(p.id, { ...known, ...p, isLocal: isLocal || (known && known.isLocal) });
  let tile = tileFor(p.id);
  if (!tile) {
    tile = createTile(p, isLocal);
    const grid = $('tiles');
    if (isLocal) grid.prepend(tile);
    else grid.append(tile);
    attachStoredStreams(p.id);
  }
  updateTile(p.id);
  updateTileCount();
}

function removeParticipant(id) {
  const tile = tileFor(id);
  if (tile) {
    for (const media of tile.querySelectorAll('video, audio')) media.srcObject = null;
    tile.remove();
  }
  state.participants.delete(id);
  updateTileCount();
}

function updateTileCount() {
  $('tiles').dataset.count = String($('tiles').children.length);
}

function createTile(p, isLocal) {
  const tile = el('div', { class: isLocal ? 'tile local' : 'tile', 'data-participant-id': p.id, role: 'group' });
  const video = el('video', { autoplay: true, playsinline: true, class: isLocal ? 'local-video' : 'remote-video' });
  video.playsInline = true;
  if (isLocal) {
    video.muted = true;
    video.setAttribute('muted', '');
    video.srcObject = state.stream;
  }
  const avatar = el('div', { class: 'tile-avatar', 'aria-hidden': 'true' }, el('span'));
  const bar = el('div', { class: 'tile-bar' },
    el('span', { class: 'tile-name' }),
    el('span', { class: 'tile-role' }),
    el('span', { class: 'tile-muted', text: 'Muted' }),
    el('span', { class: 'tile-side-room', text: 'In a private room' }),
    el('span', { class: 'tile-no-video', text: 'Video not reaching you' }));
  tile.append(video, avatar, bar);
  if (!isLocal) tile.append(el('audio', { autoplay: true, class: 'remote-audio' }));
  if (isTherapist && !isLocal) tile.append(createTileMenu(p.id));
  return tile;
}

function updateTile(id) {
  const p = state.participants.get(id);
  const tile = tileFor(id);
  if (!p || !tile) return;
  const name = p.isLocal ? `${p.name || 'You'} (you)` : p.name || 'Participant';
  tile.setAttribute('aria-label', [name, !p.audio && 'muted', p.side_room && 'in a private room']
    .filter(Boolean).join(', '));
  tile.querySelector('.tile-name').textContent = name;
  tile.querySelector('.tile-role').textContent = roleLabel(p.role);
  tile.querySelector('.tile-avatar span').textContent = initials(p.name);
  const menuButton = tile.querySelector('.tile-menu-button');
  if (menuButton) menuButton.setAttribute('aria-label', `Options for ${p.name || 'participant'}`);
  // Offer only what applies: a private talk or the way back, safety cards for patients.
  const option = (action) => tile.querySelector(`.tile-menu-list [data-action="${action}"]`);
  if (option('side-room')) {
    option('side-room').hidden = !!p.side_room;
    option('main-room').hidden = !p.side_room;
    option('safety-card').hidden = p.role !== 'patient';
    option('remove').hidden = p.role === 'therapist';
  }
  tile.classList.toggle('audio-off', !p.audio);
  tile.classList.toggle('video-off', !hasVisibleVideo(p, tile));
  tile.classList.toggle('in-side-room', !!p.side_room);
  // Not in our space (we or they are in a side room): their media is not forwarded to us.
  const apart = !p.isLocal && (state.mySideRoom ? !state.mySideRoom.withIds.includes(id) : !!p.side_room);
  tile.classList.toggle('apart', apart);
  // Honest about others' links: they say their camera is on, yet no frames reach us.
  tile.classList.toggle('no-video', !p.isLocal && !apart && !!p.video && !!videoStalled(tile));
  const video = tile.querySelector('video');
  if (p.isLocal && video.paused) playMedia(video);
}

// A remote video counts as not reaching us once no frames came for this long.
const STALLED_AFTER_MS = 5000;
const mutedSince = new WeakMap(); // remote video track → when it last stopped bringing frames

function videoStalled(tile) {
  const stream = tile.querySelector('video').srcObject;
  const track = stream && stream.getVideoTracks()[0];
  if (!track) return false;
  if (track.readyState === 'ended') return true;
  if (!track.muted) return false;
  if (!mutedSince.has(track)) mutedSince.set(track, Date.now());
  return Date.now() - mutedSince.get(track) >= STALLED_AFTER_MS;
}

function hasVisibleVideo(p, tile) {
  if (p.isLocal) return !!(state.conn && state.conn.media.video);
  const stream = tile.querySelector('video').srcObject;
  const track = stream && stream.getVideoTracks()[0];
  return !!(p.video && track && !track.muted && track.readyState !== 'ended');
}

function updateLocalTile() {
  if (!state.you || !state.conn) return;
  const me = state.participants.get(state.you.id);
  if (me) upsertParticipant({ ...me, ...state.conn.media }, true);
}

function onTrack({ participantId, kind, stream }) {
  const entry = state.streams.get(participantId) || {};
  entry[kind] = stream;
  state.streams.set(participantId, entry);
  if (kind === 'video') watchVideoTrack(stream.getVideoTracks()[0]);
  attachStoredStreams(participantId);
}

function onTrackRemoved({ participantId, kind, stream }) {
  const entry = state.streams.get(participantId);
  if (entry && entry[kind] === stream) delete entry[kind];
  const tile = tileFor(participantId);
  const media = tile && tile.querySelector(kind === 'audio' ? 'audio' : 'video');
  if (media && media.srcObject === stream) media.srcObject = null;
  if (tile) updateTile(participantId);
}

function attachStoredStreams(id) {
  const tile = tileFor(id);
  const entry = state.streams.get(id);
  if (!tile || !entry || tile.classList.contains('local')) return;
  for (const kind of ['audio', 'video']) {
    const media = tile.querySelector(kind === 'audio' ? 'audio' : 'video');
    if (entry[kind] && media && media.srcObject !== entry[kind]) {
      media.srcObject = entry[kind];
      playMedia(media);
    }
  }
  updateTile(id);
}

// A remote video track is "muted" while no frames arrive (camera off, or not forwarded).
const watchedTracks = new WeakSet();
function watchVideoTrack(track) {
  if (!track || watchedTracks.has(track)) return;
  watchedTracks.add(track);
  const refresh = () => { for (const id of state.participants.keys()) updateTile(id); };
  track.addEventListener('mute', () => { mutedSince.set(track, Date.now()); refresh(); });
  track.addEventListener('unmute', () => { mutedSince.delete(track); refresh(); });
  track.addEventListener('ended', refresh);
}

function onSpeaking({ participant_ids: ids }) {
  const speaking = new Set(ids);
  for (const tile of document.querySelectorAll('.tile')) {
    tile.classList.toggle('speaking', speaking.has(tile.dataset.participantId));
  }
}

function onMediaState(d) {
  const p = state.participants.get(d.participant_id);
  if (!p) return;
  if (p.isLocal) return updateLocalTile(); // our own buttons are the truth for our tile
  upsertParticipant({ ...p, audio: !!d.audio, video: !!d.video });
}

// ---- therapist tile menu -------------------------------------------------------

let menuCounter = 0;
function createTileMenu(id) {
  const listId = `tile-menu-${++menuCounter}`;
  const toggle = el('button', { type: 'button', class: 'tile-menu-button', 'aria-expanded': 'false', 'aria-controls': listId, text: 'Options' });
  const list = el('div', { class: 'tile-menu-list', id: listId, hidden: true },
    el('button', { type: 'button', 'data-action': 'mute', text: 'Mute' }),
    el('button', { type: 'button', 'data-action': 'stop-video', text: 'Stop video' }),
    el('button', { type: 'button', 'data-action': 'safety-card', text: 'Safety card' }),
    el('button', { type: 'button', 'data-action': 'side-room', text: 'Talk privately' }),
    el('button', { type: 'button', 'data-action': 'main-room', text: 'Back to the group' }),
    el('button', { type: 'button', 'data-action': 'remove', class: 'danger', text: 'Remove…' }));
  toggle.addEventListener('click', () => setMenuOpen(list, toggle, list.hidden));
  list.addEventListener('click', (e) => {
    const action = e.target.closest('button')?.dataset.action;
    if (!action) return;
    setMenuOpen(list, toggle, false);
    onTileAction(action, id);
  });
  return el('div', { class: 'tile-menu' }, toggle, list);
}

function setMenuOpen(list, toggle, open) {
  if (open) closeAllMenus();
  list.hidden = !open;
  toggle.setAttribute('aria-expanded', open ? 'true' : 'false');
}

function closeAllMenus() {
  for (const list of document.querySelectorAll('.tile-menu-list')) {
    if (list.hidden) continue;
    list.hidden = true;
    document.querySelector(`[aria-controls="${list.id}"]`)?.setAttribute('aria-expanded', 'false');
  }
}

function onTileAction(action, id) {
  const name = state.participants.get(id)?.name || 'this person';
  if (action === 'remove') return openRemoveDialog(id, name);
  if (['safety-card', 'side-room', 'main-room'].includes(action)) {
    state.conn.send({ type: action, participant_id: id });
    return;
  }
  if (state.conn.send({ type: action, participant_id: id })) {
    announce(action === 'mute' ? `${name} was muted.` : `${name}'s video was stopped.`);
  }
}

function openRemoveDialog(id, name) {
  const dialog = $('remove-dialog');
  state.removeTarget = id;
  $('remove-name').textContent = name;
  $('remove-reason').value = '';
  if (typeof dialog.showModal === 'function') {
    dialog.returnValue = ''; // Escape keeps the previous value otherwise
    dialog.showModal();
  } else {
    const reason = window.prompt(`Remove ${name} from the session? Please give a reason.`);
    if (reason && reason.trim()) sendRemove(id, reason.trim());
  }
}

function sendRemove(id, reason) {
  const name = state.participants.get(id)?.name || 'The participant';
  if (state.conn.send({ type: 'remove', participant_id: id, reason })) announce(`${name} was removed.`);
}

// ---- own controls ---------------------------------------------------------------

function updateMediaButtons() {
  if (!state.conn) return;
  const media = state.conn.media;
  const mic = $('mic-button');
  const cam = $('camera-button');
  mic.disabled = !localTrack('audio');
  cam.disabled = !localTrack('video');
  setPressed(mic, !media.audio);
  setPressed(cam, !media.video);
  mic.querySelector('.control-label').textContent = media.audio ? 'Mute' : 'Unmute';
  cam.querySelector('.control-label').textContent = media.video ? 'Stop video' : 'Start video';
  mic.title = mic.disabled ? 'No microphone' : media.audio ? 'Your microphone is on' : 'Your microphone is off';
  cam.title = cam.disabled ? 'No camera' : media.video ? 'Your camera is on' : 'Your camera is off';
}

function toggleMedia(kind) {
  const media = state.conn.media;
  state.conn.setMedia({ [kind]: !media[kind] });
  updateMediaButtons();
  updateLocalTile();
}

function leaveRoom() {
  state.left = true;
  if (state.conn) state.conn.leave();
  showEnded('You have left the session.', '', true);
}

function setUpRoomControls() {
  $('mic-button').addEventListener('click', () => toggleMedia('audio'));
  $('camera-button').addEventListener('click', () => toggleMedia('video'));
  $('leave-button').addEventListener('click', leaveRoom);
  $('waiting-leave-button').addEventListener('click', leaveRoom);
  $('rejoin-button').addEventListener('click', () => window.location.reload());
  $('retry-button').addEventListener('click', () => window.location.reload());
  $('panel-button').addEventListener('click', () => setPanelOpen($('side-panel').hidden));
  $('warning-close').addEventListener('click', () => { $('warning-banner').hidden = true; });
  $('sound-button').addEventListener('click', () => {
    $('sound-button').hidden = true;
    document.querySelectorAll('.remote-audio, .remote-video').forEach(playMedia);
  });
  document.addEventListener('keydown', (e) => { if (e.key === 'Escape') closeAllMenus(); });
  document.addEventListener('click', (e) => { if (!e.target.closest('.tile-menu')) closeAllMenus(); });
  window.addEventListener('pagehide', () => { if (state.conn) state.conn.leave(); });
  window.addEventListener('resize', fitRoom);
  setPanelOpen(window.matchMedia('(min-width: 900px)').matches);
}

/** The room's layout needs where it starts on the page and how tall the controls are. */
function fitRoom() {
  const room = $('screen-room');
  if (room.hidden) return;
  const root = document.documentElement.style;
  root.setProperty('--room-top', `${Math.round(room.getBoundingClientRect().top + window.scrollY)}px`);
  root.setProperty('--controls-height', `${Math.round(room.querySelector('.controls').getBoundingClientRect().height)}px`);
}

function setPanelOpen(open) {
  $('side-panel').hidden = !open;
  $('panel-button').setAttribute('aria-expanded', open ? 'true' : 'false');
  if (open) state.unread = 0;
  updatePanelBadge();
}

function updatePanelBadge() {
  const waiting = isTherapist ? state.waiting.length : 0;
  const count = state.unread + waiting;
  const badge = $('panel-badge');
  badge.textContent = count > 0 ? String(count) : '';
  badge.hidden = count === 0 || !$('side-panel').hidden;
}

// ---- own connection quality (this page's getStats) ---------------------------------

const QUALITY_EVERY_MS = 4000;

function startQuality() {
  if (state.quality.timer) return;
  state.quality.timer = setInterval(() => { measureQuality().catch(() => {}); }, QUALITY_EVERY_MS);
}

function stopQuality() {
  clearInterval(state.quality.timer);
  state.quality.timer = null;
  $('quality').hidden = true;
}

async function measureQuality() {
  const pc = state.conn && state.conn.pc;
  const badge = $('quality');
  if (!pc || pc.connectionState !== 'connected') {
    badge.hidden = !pc;
    badge.textContent = 'Connection: connecting…';
    badge.dataset.level = 'fair';
    return;
  }
  let rtt = null;
  let lost = 0;
  let received = 0;
  (await pc.getStats()).forEach((s) => {
    if (s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded' && s.currentRoundTripTime != null) rtt = s.currentRoundTripTime;
    if (s.type === 'inbound-rtp') {
      lost += Math.max(0, s.packetsLost || 0);
      received += s.packetsReceived || 0;
    }
  });
  const dLost = lost - state.quality.lost;
  const dReceived = received - state.quality.received;
  state.quality.lost = lost;
  state.quality.received = received;
  const loss = dLost + dReceived > 0 ? dLost / (dLost + dReceived) : 0;
  const level = (rtt != null && rtt > 0.6) || loss > 0.08 ? 'poor'
    : (rtt != null && rtt > 0.3) || loss > 0.02 ? 'fair' : 'good';
  badge.dataset.level = level;
  badge.textContent = `Connection: ${level}`;
  for (const id of state.participants.keys()) updateTile(id); // stalled remote videos
  badge.title = `Round trip ${rtt != null ? Math.round(rtt * 1000) : '?'} ms, ${Math.round(loss * 100)} % of packets lost`;
  badge.hidden = false;
}

// ---- time ---------------------------------------------------------------------

function startClock() {
  stopClock();
  renderTime();
  state.clock = setInterval(renderTime, 1000);
}

function stopClock() {
  clearInterval(state.clock);
  state.clock = null;
}

function renderTime() {
  const node = $('time-remaining');
  if (!state.endsAt) {
    node.textContent = '';
    return;
  }
  const seconds = Math.max(0, Math.round((state.endsAt - Date.now()) / 1000));
  node.textContent = seconds > 0 ? `${formatDuration(seconds)} left` : 'Time is up';
  node.classList.toggle('soon', seconds <= 300);
  node.title = `Ends at ${formatClock(new Date(state.endsAt))}`;
}

// ---- chat ---------------------------------------------------------------------

function setUpChat() {
  const input = $('chat-input');
  $('chat-form').addEventListener('submit', (e) => {
    e.preventDefault();
    sendChat();
  });
  input.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      sendChat();
    }
  });
}

function sendChat() {
  const input = $('chat-input');
  const text = input.value.trim();
  if (!text || !state.conn) return;
  const to = $('chat-to').value === 'therapists' ? 'therapists' : 'room';
  if (!state.conn.send({ type: 'chat', text, to })) {
    showNotice('Your message could not be sent. Please try again when the connection is back.', 'error');
    return;
  }
  const item = addChatEntry({ name: 'You', text, to, mine: true });
  item.classList.add('pending');
  state.pendingChats.push({ text, to, item });
  input.value = '';
}

function onChat(d) {
  const from = d.from || {};
  if (state.you && from.id === state.you.id) {
    // The server's echo of our own message: confirm the one we already show.
    const i = state.pendingChats.findIndex((c) => c.text === d.text && c.to === d.to);
    if (i >= 0) {
      state.pendingChats.splice(i, 1)[0].item.classList.remove('pending');
      return;
    }
  }
  const mine = !!(state.you && from.id === state.you.id);
  addChatEntry({ name: mine ? 'You' : from.name || 'Participant', role: from.role, text: d.text, to: d.to, mine });
  if ($('side-panel').hidden) {
    state.unread += 1;
    updatePanelBadge();
  }
}

function addChatEntry({ name, role, text, to, mine }) {
  const privateNote = to === 'therapists' ? ' · to therapists only' : '';
  const meta = `${roleLabel(role) ? ` (${roleLabel(role)})` : ''}${privateNote} · ${formatClock(new Date())}`;
  const item = el('li', { class: `chat-message${to === 'therapists' ? ' private' : ''}${mine ? ' mine' : ''}` },
    el('div', { class: 'chat-head' }, el('span', { class: 'chat-from', text: name }), el('span', { class: 'chat-meta', text: meta })),
    el('p', { class: 'chat-text', text: String(text || '') }));
  const log = $('chat-log');
  const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
  log.append(item);
  if (atBottom || mine) log.scrollTop = log.scrollHeight;
  return item;
}

// ---- therapist panel --------------------------------------------------------------

function setUpTherapistPanel() {
  if (!isTherapist) return;
  for (const node of document.querySelectorAll('.therapist-only')) node.hidden = false;
  $('admit-all-button').addEventListener('click', () => state.conn && state.conn.send({ type: 'admit-all' }));
  $('waiting-list').addEventListener('click', onWaitingListClick);
  $('lock-button').addEventListener('click', toggleLock);
  for (const button of document.querySelectorAll('.extend-button')) {
    button.addEventListener('click', () => extend(Number(button.dataset.minutes)));
  }
  $('end-button').addEventListener('click', () => {
    const dialog = $('end-dialog');
    if (typeof dialog.showModal === 'function') {
      dialog.returnValue = '';
      dialog.showModal();
    } else if (window.confirm('End the session for everyone?')) endForEveryone();
  });
  $('end-dialog').addEventListener('close', () => {
    if ($('end-dialog').returnValue === 'confirm') endForEveryone();
  });
  $('remove-dialog').addEventListener('close', () => {
    const dialog = $('remove-dialog');
    const reason = $('remove-reason').value.trim();
    if (dialog.returnValue === 'confirm' && reason && state.removeTarget) sendRemove(state.removeTarget, reason);
    state.removeTarget = null;
  });
}

function onWaitingList({ waiting }) {
  const before = new Set(state.waiting.map((w) => w.participant_id));
  state.waiting = waiting;
  for (const w of waiting) {
    if (!before.has(w.participant_id)) announce(`${w.name || 'Someone'} is waiting to be let in.`);
  }
  renderWaitingList();
  updatePanelBadge();
}

function renderWaitingList() {
  const list = $('waiting-list');
  list.replaceChildren(...state.waiting.map(waitingItem));
  $('waiting-empty').hidden = state.waiting.length > 0;
  $('admit-all-button').disabled = state.waiting.length === 0;
  $('waiting-count').textContent = state.waiting.length ? `(${state.waiting.length})` : '';
}

function waitingItem(w) {
  const since = Date.parse(w.since);
  const details = [roleLabel(w.role), Number.isFinite(since) ? `waiting since ${formatClock(new Date(since))}` : '']
    .filter(Boolean).join(' · ');
  return el('li', { class: 'waiting-person', 'data-participant-id': w.participant_id },
    el('div', { class: 'waiting-who' }, el('span', { class: 'waiting-name', text: w.name || 'Someone' }),
      el('span', { class: 'muted', text: details })),
    el('div', { class: 'waiting-actions' },
      el('button', { type: 'button', class: 'primary', 'data-action': 'admit', 'aria-label': `Admit ${w.name || ''}`.trim(), text: 'Admit' }),
      el('button', { type: 'button', 'data-action': 'deny', 'aria-label': `Deny ${w.name || ''}`.trim(), text: 'Deny' })));
}

function onWaitingListClick(e) {
  const button = e.target.closest('button[data-action]');
  const item = button && button.closest('.waiting-person');
  if (!item || !state.conn) return;
  const id = item.dataset.participantId;
  const name = item.querySelector('.waiting-name').textContent;
  if (button.dataset.action === 'deny' && !window.confirm(`Turn ${name} away? They will not be let in.`)) return;
  state.conn.send({ type: button.dataset.action, participant_id: id });
  button.disabled = true;
}

// The protocol does not report the lock state; we track what we last asked for.
function toggleLock() {
  const button = $('lock-button');
  const lock = button.getAttribute('aria-pressed') !== 'true';
  if (!state.conn || !state.conn.send({ type: lock ? 'lock' : 'unlock' })) return;
  setPressed(button, lock);
  announce(lock ? 'The room is locked. New people cannot enter.' : 'The room is unlocked.');
}

function extend(minutes) {
  if (state.conn && state.conn.send({ type: 'extend', minutes })) {
    announce(`Asked to extend the session by ${minutes} minutes.`);
  }
}

function endForEveryone() {
  if (state.conn) state.conn.send({ type: 'end' });
}

// ---- start --------------------------------------------------------------------------

function main() {
  document.title = config.sessionTitle ? `${config.sessionTitle} · vio` : document.title;
  setUpPrejoin();
  setUpRoomControls();
  setUpChat();
  setUpTherapistPanel();
  renderWaitingList();
  renderRoster();
  renderKeptOut();
  showScreen('prejoin');
  startPreview();
}

main();
