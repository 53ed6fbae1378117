// vio room connection: one WebSocket (signaling, docs/protocol.md v1) and one
// RTCPeerConnection per session. The server makes every offer; we only answer.
// Standard WebRTC APIs only; no dependencies, no build step.

export const PROTOCOL_VERSION = 1;

// Used for the pre-join preview, before the server's caps are known.
export const DEFAULT_CAPS = Object.freeze({ width: 640, height: 360, fps: 24, max_bitrate: 0 });

const PING_INTERVAL_MS = 20000;
const ICE_GATHER_CAP_MS = 2000;
const ICE_GRACE_MS = 4000; // ICE disconnected/failed this long → rebuild the connection
// A peer connection not connected this long after our answer is reported as failed, without
// waiting for the browser to give up on ICE by itself.
const MEDIA_CONNECT_TIMEOUT_MS = 15000;
const BACKOFF_START_MS = 1000;
const BACKOFF_CAP_MS = 15000;
const LEAVE_CLOSE_MS = 1000; // after `leave`, give the server this long to close first
const MAX_MESSAGE_BYTES = 64 * 1024;
const WS_OPEN = 1;
const CLOSE_NORMAL = 1000;
const CLOSE_RECONNECTING = 4000; // our own close when we drop a socket to reconnect

const DIRECTIONS = new Set(['sendrecv', 'sendonly', 'recvonly', 'inactive']);

/** getUserMedia video constraints for the given caps (and optional camera). */
export function videoConstraints(caps = DEFAULT_CAPS, deviceId = null) {
  const c = {};
  if (caps.width > 0) c.width = { ideal: caps.width };
  if (caps.height > 0) c.height = { ideal: caps.height };
  if (caps.fps > 0) c.frameRate = { ideal: caps.fps, max: caps.fps };
  if (deviceId) c.deviceId = { exact: deviceId };
  return c;
}

/** getUserMedia audio constraints (optional microphone). */
export function audioConstraints(deviceId = null) {
  const c = { echoCancellation: true, noiseSuppression: true, autoGainControl: true };
  if (deviceId) c.deviceId = { exact: deviceId };
  return c;
}

/** Splits an SDP into its m-sections: [{kind, port, mid, direction}]. */
export function parseSdpSections(sdp) {
  const sections = [];
  let sessionDirection = 'sendrecv';
  let current = null;
  for (const raw of sdp.split(/\r?\n/)) {
    const line = raw.trim();
    if (line.startsWith('m=')) {
      const [kind, port] = line.slice(2).split(' ');
      current = { kind, port: Number(port), mid: null, direction: sessionDirection };
      sections.push(current);
    } else if (line.startsWith('a=')) {
      const attr = line.slice(2);
      if (DIRECTIONS.has(attr)) {
        if (current) current.direction = attr;
        else sessionDirection = attr;
      } else if (current && attr.startsWith('mid:')) {
        current.mid = attr.slice(4);
      }
    }
  }
  return sections;
}

/** Resolves once ICE gathering is complete, or after `capMs` at most. */
export function waitForIceGathering(pc, capMs = ICE_GATHER_CAP_MS) {
  if (pc.iceGatheringState === 'complete') return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      pc.removeEventListener('icegatheringstatechange', onState);
      pc.removeEventListener('icecandidate', onCandidate);
      resolve();
    };
    const onState = () => { if (pc.iceGatheringState === 'complete') done(); };
    const onCandidate = (e) => { if (!e.candidate) done(); };
    const timer = setTimeout(done, capMs);
    pc.addEventListener('icegatheringstatechange', onState);
    pc.addEventListener('icecandidate', onCandidate);
  });
}

function resolveWsUrl(url) {
  const loc = globalThis.location;
  if (!loc) return url;
  const u = new URL(url, loc.href);
  if (u.protocol === 'http:') u.protocol = 'ws:';
  else if (u.protocol === 'https:') u.protocol = 'wss:';
  return u.href;
}

function byteLength(text) {
  return new TextEncoder().encode(text).length;
}

/** How much to scale a video of `settings` down so it fits within the caps (either orientation). */
function scaleDownFor(settings, caps) {
  const { width, height } = settings || {};
  if (!(width > 0 && height > 0 && caps.width > 0 && caps.height > 0)) return 1;
  const ratio = Math.max(
    Math.max(width, height) / Math.max(caps.width, caps.height),
    Math.min(width, height) / Math.min(caps.width, caps.height),
  );
  return ratio > 1 ? ratio : 1;
}

/**
 * Events (all CustomEvent; data in `event.detail`):
 *   status {state: "connecting"|"connected"|"reconnecting"|"closed", attempt?, delay?, reason?}
 *   welcome (server message + endsAt: ms on the local clock)   waiting, refused, ended (server message)
 *   participant-joined {participant}   participant-left {participant_id, participantId}
 *   track {participantId, kind, stream, track, mid}   track-removed {participantId, kind, stream, mid}
 *   speaking {participant_ids}   media-state {participant_id, audio, video}   waiting-list {waiting}
 *   chat {from, text, to}   time {ends_at, remaining_seconds, endsAt}   warning {minutes_left, message}
 *   moderated {action, media: {audio, video}}   error {code, message, source: "server"|"client"}
 *   media-connection {state: "connected"|"failed", turnRefused: bool}: "failed" when a peer
 *     connection never got connected (ICE or DTLS failed, or MEDIA_CONNECT_TIMEOUT_MS passed
 *     after the answer); turnRefused when a TURN server turned down our credentials
 */
export class RoomConnection extends EventTarget {
  constructor({ wsUrl, iceServers = [], name = null } = {}) {
    super();
    if (!wsUrl) throw new TypeError('RoomConnection needs a wsUrl');
    this.wsUrl = resolveWsUrl(wsUrl);
    this.iceServers = Array.isArray(iceServers) ? iceServers : [];
    this.name = name || null;
    this.localStream = null;
    this.you = null;
    this.session = null;
    this.caps = { ...DEFAULT_CAPS };
    this.status = 'idle';
    this.ws = null;
    this.pc = null;

    this._started = false;
    this._final = false; // refused, ended or left: never reconnect
    this._joined = false; // `welcome` received on the current socket
    this._attempt = 0;
    this._media = { audio: false, video: false };
    this._localMids = new Set();
    this._remote = new Map(); // mid → {participantId, kind, stream, track}
    this._pendingOffer = null;
    this._offerBusy = false;
    this._clockOffset = 0; // local clock minus server clock, in ms
    this._timers = { reconnect: null, ping: null, ice: null, close: null, media: null };
    this._mediaConnected = false; // the current peer connection has been connected
    this._mediaFailedReported = false; // its failure to connect has been reported
    this._turnRefused = false; // a TURN server refused the credentials (icecandidateerror)
    this._lastHeard = 0;
    this._pingSentAt = 0;
    this._onOnline = () => this._reconnectNow();
  }

  // ---- public API -------------------------------------------------------

  /** Opens the connection and asks to enter. `localStream` may be null (no camera, no microphone). */
  join(localStream = null) {
    if (this._started) throw new Error('join() may only be called once');
    this._started = true;
    this.localStream = localStream;
    this._media = this._trackState();
    globalThis.addEventListener?.('online', this._onOnline);
    this._connect();
  }

  /** The user's own buttons: toggles track.enabled and tells the server. */
  setMedia({ audio, video } = {}) {
    if (typeof audio === 'boolean') this._setEnabled('audio', audio);
    if (typeof video === 'boolean') this._setEnabled('video', video);
    this._media = this._trackState();
    this._sendMedia();
    return this.media;
  }

  /** Current own media state: a kind is "on" when a live, enabled track exists. */
  get media() {
    return { ...this._media };
  }

  /** Sends one message (e.g. moderator commands, chat). Returns false if it could not be sent. */
  send(obj) {
    const ws = this.ws;
    if (!ws || ws.readyState !== WS_OPEN) return false;
    const text = JSON.stringify(obj);
    if (byteLength(text) > MAX_MESSAGE_BYTES) {
      this._emitError('too-large', 'The message is too long to send.');
      return false;
    }
    ws.send(text);
    return true;
  }

  /** Leaves the room for good. Local tracks are left running; the caller stops them. */
  leave() {
    if (this._final || !this._started) return;
    this._final = true;
    this.send({ type: 'leave' });
    this._finish(LEAVE_CLOSE_MS);
  }

  // ---- connection lifecycle ---------------------------------------------

  _connect() {
    if (this._final) return;
    if (this.status === 'idle') this._setStatus('connecting');
    let ws;
    try {
      ws = new WebSocket(this.wsUrl);
    } catch (err) {
      this._emitError('connect-failed', err.message || 'Could not open the connection.');
      this._scheduleReconnect('could not open socket');
      return;
    }
    this.ws = ws;
    ws.addEventListener('open', () => { if (ws === this.ws) this._onOpen(); });
    ws.addEventListener('message', (e) => { if (ws === this.ws) this._onMessage(e.data); });
    ws.addEventListener('close', (e) => { if (ws === this.ws) this._onClose(e); });
    // An 'error' event is always followed by 'close', which does the work.
  }

  _onOpen() {
    this._lastHeard = Date.now();
    const join = { type: 'join', v: PROTOCOL_VERSION };
    if (this.name) join.name = this.name;
    this.send(join);
    this._startPing();
  }

  _onClose(event) {
    this.ws = null;
    this._joined = false;
    this._stopPing();
    if (this._final) {
      this._finish();
    } else if (event.code === CLOSE_NORMAL) {
      // A normal close without `refused`/`ended` first: the server let us go on purpose.
      this._final = true;
      this._emitError('closed', event.reason || 'The connection was closed.');
      this._finish();
    } else {
      this._scheduleReconnect(`connection lost (${event.code})`);
    }
  }

  _scheduleReconnect(reason) {
    if (this._final || this._timers.reconnect) return;
    this._dropConnection();
    const delay = Math.min(BACKOFF_START_MS * 2 ** this._attempt, BACKOFF_CAP_MS);
    this._attempt += 1;
    this._setStatus('reconnecting', { attempt: this._attempt, delay, reason });
    this._timers.reconnect = setTimeout(() => {
      this._timers.reconnect = null;
      this._connect();
    }, delay);
  }

  /** The browser says it is back online: don't wait out the backoff. */
  _reconnectNow() {
    if (!this._timers.reconnect || this._final) return;
    clearTimeout(this._timers.reconnect);
    this._timers.reconnect = null;
    this._connect();
  }

  /** Closes the socket and peer connection without ending the session. */
  _dropConnection() {
    this._stopPing();
    this._joined = false;
    const ws = this.ws;
    this.ws = null; // its close event is now ignored
    if (ws && ws.readyState <= WS_OPEN) {
      try { ws.close(CLOSE_RECONNECTING, 'reconnecting'); } catch { /* already closing */ }
    }
    this._closePeerConnection();
  }

  /** Final teardown (refused, ended, left, or closed by the server). */
  _finish(closeDelayMs = 0) {
    this._final = true;
    clearTimeout(this._timers.reconnect);
    this._timers.reconnect = null;
    this._stopPing();
    this._closePeerConnection();
    globalThis.removeEventListener?.('online', this._onOnline);
    const ws = this.ws;
    if (ws && ws.readyState <= WS_OPEN && !this._timers.close) {
      this._timers.close = setTimeout(() => {
        try { ws.close(CLOSE_NORMAL); } catch { /* already closed */ }
      }, closeDelayMs);
    }
    if (this.status !== 'closed') this._setStatus('closed');
  }

  _setStatus(state, extra = {}) {
    this.status = state;
    this._emit('status', { state, ...extra });
  }

  // ---- keep-alive ---------------------------------------------------------

  _startPing() {
    this._stopPing();
    this._pingSentAt = 0;
    this._timers.ping = setInterval(() => this._pingTick(), PING_INTERVAL_MS);
  }

  _stopPing() {
    clearInterval(this._timers.ping);
    this._timers.ping = null;
  }

  _pingTick() {
    // Nothing at all since the previous ping (not even its pong): the socket is dead.
    if (this._pingSentAt && this._lastHeard < this._pingSentAt) {
      this._scheduleReconnect('no reply from server');
      return;
    }
    this._pingSentAt = Date.now();
    this.send({ type: 'ping' });
  }

  // ---- server messages ----------------------------------------------------

  _onMessage(data) {
    this._lastHeard = Date.now();
    let msg;
    try {
      msg = JSON.parse(data);
    } catch {
      console.warn('vio: ignoring a message that is not JSON');
      return;
    }
    if (!msg || typeof msg.type !== 'string') return;
    const handler = this._handlers[msg.type];
    if (handler) handler.call(this, msg);
  }

  get _handlers() {
    return {
      welcome: this._onWelcome,
      waiting: this._onWaiting,
      offer: this._onOffer,
      'participant-joined': (m) => this._emit('participant-joined', m),
      'participant-left': (m) => this._emit('participant-left', { ...m, participantId: m.participant_id }),
      'waiting-list': (m) => this._emit('waiting-list', { ...m, waiting: Array.isArray(m.waiting) ? m.waiting : [] }),
      speaking: (m) => this._emit('speaking', { ...m, participant_ids: Array.isArray(m.participant_ids) ? m.participant_ids : [] }),
      'media-state': (m) => this._emit('media-state', m),
      chat: (m) => this._emit('chat', m),
      warning: (m) => this._emit('warning', m),
      time: this._onTime,
      moderated: this._onModerated,
      'room-state': (m) => this._emit('room-state', m),
      'safety-card': (m) => this._emit('safety-card', m),
      'side-room': (m) => this._emit('side-room', m),
      'side-room-state': (m) => this._emit('side-room-state', m),
      'video-paused': (m) => this._emit('video-paused', { ...m, participant_ids: Array.isArray(m.participant_ids) ? m.participant_ids : [] }),
      'join-refused': (m) => this._emit('join-refused', m),
      roster: (m) => this._emit('roster', m),
      pong: () => {},
      error: (m) => this._emit('error', { ...m, source: 'server' }),
      refused: (m) => this._onFinal('refused', m),
      ended: (m) => this._onFinal('ended', m),
    };
  }

  _onWelcome(msg) {
    this.you = msg.you || null;
    this.session = msg.session || null;
    this.caps = { ...DEFAULT_CAPS, ...(msg.caps || {}) };
    this._joined = true;
    this._attempt = 0;
    this._applyCapsToLocalTracks();
    if (this.pc) this._applyCapsToSenders(this.pc);
    this._setStatus('connected');
    this._emit('welcome', { ...msg, endsAt: this._toLocalTime(this.session?.ends_at) });
    this._sendMedia(); // the server learns our buttons' state (also after a reconnect)
  }

  _onWaiting(msg) {
    this._attempt = 0;
    this._setStatus('connected');
    this._emit('waiting', msg);
  }

  _onTime(msg) {
    const endsAtServer = Date.parse(msg.ends_at);
    if (Number.isFinite(endsAtServer) && Number.isFinite(msg.remaining_seconds)) {
      this._clockOffset = Date.now() + msg.remaining_seconds * 1000 - endsAtServer;
    }
    this._emit('time', { ...msg, endsAt: this._toLocalTime(msg.ends_at) });
  }

  _onModerated(msg) {
    const kind = { mute: 'audio', 'stop-video': 'video' }[msg.action];
    if (kind) {
      this._setEnabled(kind, false);
      this._media = this._trackState();
      this._sendMedia();
    }
    this._emit('moderated', { ...msg, media: this.media });
  }

  _onFinal(type, msg) {
    this._final = true;
    this._emit(type, msg);
    this._finish(LEAVE_CLOSE_MS);
  }

  _toLocalTime(iso) {
    const t = Date.parse(iso);
    return Number.isFinite(t) ? t + this._clockOffset : null;
  }

  // ---- negotiation --------------------------------------------------------

  /** Only the newest offer matters: older ones still waiting are dropped. */
  _onOffer(msg) {
    this._pendingOffer = msg;
    if (!this._offerBusy) this._drainOffers();
  }

  async _drainOffers() {
    this._offerBusy = true;
    try {
      while (this._pendingOffer) {
        const msg = this._pendingOffer;
        this._pendingOffer = null;
        try {
          await this._answerOffer(msg);
        } catch (err) {
          console.error('vio: could not answer offer', err);
          this._emitError('negotiation-failed', 'The video connection could not be set up.');
        }
      }
    } finally {
      this._offerBusy = false;
    }
  }

  async _answerOffer(msg) {
    if (typeof msg.sdp !== 'string') throw new Error('offer without sdp');
    const ws = this.ws;
    const pc = this._ensurePeerConnection();
    const stale = () => pc !== this.pc || ws !== this.ws;
    await pc.setRemoteDescription({ type: 'offer', sdp: msg.sdp });
    if (stale()) return;
    const tracks = Array.isArray(msg.tracks) ? msg.tracks : [];
    await this._setUpTransceivers(pc, parseSdpSections(msg.sdp), tracks);
    if (stale()) return;
    const answer = await pc.createAnswer();
    if (stale()) return;
    await pc.setLocalDescription(answer);
    await waitForIceGathering(pc, ICE_GATHER_CAP_MS);
    if (stale()) return;
    this.send({ type: 'answer', sdp: pc.localDescription.sdp });
    this._watchMediaConnect(pc);
    await this._applyCapsToSenders(pc);
  }

  _ensurePeerConnection() {
    if (this.pc) return this.pc;
    const pc = new RTCPeerConnection({ iceServers: this.iceServers, bundlePolicy: 'max-bundle' });
    pc.addEventListener('iceconnectionstatechange', () => this._onIceState(pc));
    pc.addEventListener('connectionstatechange', () => this._onConnectionState(pc));
    pc.addEventListener('icecandidateerror', (e) => {
      // 401: the TURN server refused our credentials (wrong or expired).
      if (pc === this.pc && e.errorCode === 401) this._turnRefused = true;
    });
    this._mediaConnected = false;
    this._mediaFailedReported = false;
    this._turnRefused = false;
    this.pc = pc;
    return pc;
  }

  /** After an answer: report a connection that does not come up within the timeout. */
  _watchMediaConnect(pc) {
    if (this._mediaConnected || this._timers.media) return;
    this._timers.media = setTimeout(() => {
      this._timers.media = null;
      if (pc === this.pc && !this._mediaConnected) this._mediaFailed();
    }, MEDIA_CONNECT_TIMEOUT_MS);
  }

  _onConnectionState(pc) {
    if (pc !== this.pc || this._final) return;
    if (pc.connectionState === 'connected') {
      clearTimeout(this._timers.media);
      this._timers.media = null;
      if (!this._mediaConnected) {
        this._mediaConnected = true;
        this._emit('media-connection', { state: 'connected', turnRefused: false });
      }
    } else if (pc.connectionState === 'failed' && !this._mediaConnected) {
      this._mediaFailed();
    }
  }

  _mediaFailed() {
    clearTimeout(this._timers.media);
    this._timers.media = null;
    if (this._mediaFailedReported) return;
    this._mediaFailedReported = true;
    this._emit('media-connection', { state: 'failed', turnRefused: this._turnRefused });
  }

  _closePeerConnection() {
    clearTimeout(this._timers.ice);
    this._timers.ice = null;
    clearTimeout(this._timers.media);
    this._timers.media = null;
    for (const [mid, entry] of this._remote) this._emitTrackRemoved(mid, entry);
    this._remote.clear();
    this._localMids = new Set();
    this._pendingOffer = null;
    const pc = this.pc;
    this.pc = null;
    if (pc) pc.close(); // does not stop our local tracks
  }

  /**
   * The offer's recvonly m-lines are where we publish; every other m-line carries
   * someone else's track, named by the offer's `tracks` list.
   */
  async _setUpTransceivers(pc, sections, tracks) {
    const sectionByMid = new Map(sections.map((s) => [s.mid, s]));
    const trackByMid = new Map(tracks.filter((t) => t && typeof t.mid === 'string').map((t) => [t.mid, t]));
    const youId = this.you?.id;
    const usedTracks = new Set();
    const localMids = new Set();
    for (const tr of pc.getTransceivers()) {
      const section = sectionByMid.get(tr.mid);
      if (tr.mid == null || !section || section.port === 0 || tr.currentDirection === 'stopped') continue;
      const info = trackByMid.get(tr.mid);
      const mine = section.direction === 'recvonly' || (youId && info?.participant_id === youId);
      if (mine) {
        localMids.add(tr.mid);
        tr.direction = 'sendonly';
        const local = this._unusedLocalTrack(tr.receiver.track.kind, usedTracks);
        const track = local && (local.kind !== 'video' || local.enabled) ? local : null;
        if (tr.sender.track !== track) await tr.sender.replaceTrack(track);
      } else if (tr.direction !== 'recvonly') {
        tr.direction = 'recvonly';
      }
    }
    this._localMids = localMids;
    this._syncRemoteTracks(pc, trackByMid);
  }

  _unusedLocalTrack(kind, used) {
    const tracks = this.localStream ? this.localStream.getTracks() : [];
    const track = tracks.find((t) => t.kind === kind && t.readyState !== 'ended' && !used.has(t)) || null;
    if (track) used.add(track);
    return track;
  }

  /** Announces remote tracks whose owner is new or changed (mids can be reused). */
  _syncRemoteTracks(pc, trackByMid) {
    const youId = this.you?.id;
    const seen = new Set();
    for (const tr of pc.getTransceivers()) {
      const mid = tr.mid;
      if (mid == null || this._localMids.has(mid)) continue;
      const info = trackByMid.get(mid);
      const owner = info && info.participant_id !== youId ? info.participant_id : null;
      const prev = this._remote.get(mid);
      if (prev && prev.participantId === owner) { seen.add(mid); continue; }
      if (prev) { this._remote.delete(mid); this._emitTrackRemoved(mid, prev); }
      if (!owner) continue;
      const track = tr.receiver.track;
      const entry = { participantId: owner, kind: track.kind, track, stream: new MediaStream([track]) };
      this._remote.set(mid, entry);
      seen.add(mid);
      this._emit('track', { ...entry, mid });
    }
    for (const [mid, entry] of this._remote) {
      if (!seen.has(mid)) { this._remote.delete(mid); this._emitTrackRemoved(mid, entry); }
    }
  }

  _emitTrackRemoved(mid, entry) {
    this._emit('track-removed', { participantId: entry.participantId, kind: entry.kind, stream: entry.stream, mid });
  }

  _onIceState(pc) {
    if (pc !== this.pc || this._final) return;
    const state = pc.iceConnectionState;
    if (state === 'connected' || state === 'completed') {
      clearTimeout(this._timers.ice);
      this._timers.ice = null;
      if (this.status === 'reconnecting' && this._joined) this._setStatus('connected');
    } else if (state === 'disconnected' || state === 'failed') {
      if (state === 'failed' && !this._mediaConnected) this._mediaFailed();
      if (this.status === 'connected') this._setStatus('reconnecting', { reason: 'media connection interrupted' });
      if (!this._timers.ice) {
        this._timers.ice = setTimeout(() => {
          this._timers.ice = null;
          this._scheduleReconnect('media connection lost');
        }, ICE_GRACE_MS);
      }
    }
  }

  // ---- publishing caps ----------------------------------------------------

  async _applyCapsToLocalTracks() {
    const tracks = this.localStream ? this.localStream.getVideoTracks() : [];
    for (const track of tracks) {
      try {
        await track.applyConstraints(videoConstraints(this.caps));
      } catch (err) {
        console.warn('vio: camera could not apply the size limits', err);
      }
    }
  }

  async _applyCapsToSenders(pc) {
    for (const tr of pc.getTransceivers()) {
      const track = tr.sender.track;
      if (!this._localMids.has(tr.mid) || !track || track.kind !== 'video') continue;
      await this._capSender(tr.sender, track);
    }
  }

  async _capSender(sender, track) {
    const caps = this.caps;
    const params = sender.getParameters();
    const encodings = params.encodings && params.encodings.length ? params.encodings : [{}];
    const scale = scaleDownFor(track.getSettings ? track.getSettings() : null, caps);
    for (const enc of encodings) {
      if (caps.max_bitrate > 0) enc.maxBitrate = caps.max_bitrate;
      if (caps.fps > 0) enc.maxFramerate = caps.fps;
      if (scale > 1) enc.scaleResolutionDownBy = scale;
    }
    params.encodings = encodings;
    try {
      await sender.setParameters(params);
    } catch (err) {
      console.warn('vio: could not limit the video sender', err);
    }
  }

  // ---- own media ----------------------------------------------------------

  _localTracks(kind) {
    if (!this.localStream) return [];
    return kind === 'audio' ? this.localStream.getAudioTracks() : this.localStream.getVideoTracks();
  }

  _setEnabled(kind, enabled) {
    for (const t of this._localTracks(kind)) t.enabled = enabled;
    // A stopped camera sends nothing (not black frames), so the server can tell
    // audio-video participation from audio-only. A muted microphone keeps sending silence.
    if (kind === 'video' && this.pc) {
      for (const tr of this.pc.getTransceivers()) {
        if (!this._localMids || !this._localMids.has(tr.mid)) continue;
        if (tr.receiver.track.kind !== 'video') continue;
        const track = enabled ? this._localTracks('video').find((t) => t.readyState === 'live') || null : null;
        if (tr.sender.track !== track) tr.sender.replaceTrack(track).catch(() => {});
      }
    }
  }

  _trackState() {
    const on = (kind) => this._localTracks(kind).some((t) => t.enabled && t.readyState === 'live');
    return { audio: on('audio'), video: on('video') };
  }

  _sendMedia() {
    if (this._joined) this.send({ type: 'media', ...this._media });
  }

  // ---- events -------------------------------------------------------------

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  _emitError(code, message) {
    this._emit('error', { code, message, source: 'client' });
  }
}
