// One WebSocket to chatd: requests matched to their replies by "req",
// pushes handed on, a ping while idle, and reconnecting with a growing
// pause (0.5 s doubling to 10 s, with jitter) whenever it drops.
// What to do once connected (resume, send again) is the app's business.

const PING_EVERY = 30000; // chatd closes sessions silent for 90 s
const PONG_WAIT = 20000;

export function wsUrl() {
  const scheme = location.protocol === 'https:' ? 'wss://' : 'ws://';
  return scheme + location.host + '/ws';
}

export class Conn {
  // onOpen(): connected; onPush(value); onState(state, detail) with state
  // one of "connecting", "open", "waiting" (detail: ms until the next try).
  constructor({ onOpen, onPush, onState }) {
    this.onOpen = onOpen;
    this.onPush = onPush;
    this.onState = onState;
    this.ws = null;
    this.pending = new Map();
    this.nextReq = 1;
    this.failures = 0;
    this.retryTimer = null;
    this.pingTimer = null;
    this.stopped = true;
  }

  get isOpen() {
    return this.ws !== null && this.ws.readyState === WebSocket.OPEN;
  }

  start() {
    this.stopped = false;
    this.connectNow();
  }

  // Stop for good (logged out): no reconnecting.
  stop() {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    if (this.ws) this.ws.close(1000);
  }

  connectNow() {
    clearTimeout(this.retryTimer);
    if (this.ws && this.ws.readyState <= WebSocket.OPEN) return;
    this.onState('connecting');
    const ws = new WebSocket(wsUrl());
    this.ws = ws;
    ws.onopen = () => {
      this.failures = 0;
      this.onState('open');
      this.schedulePing();
      this.onOpen();
    };
    ws.onmessage = (ev) => this.receive(ev.data);
    ws.onclose = () => {
      if (this.ws !== ws) return;
      this.ws = null;
      clearTimeout(this.pingTimer);
      this.failAll();
      if (!this.stopped) this.scheduleRetry();
    };
    // A failed connection also closes; onclose retries.
    ws.onerror = () => {};
  }

  // Drop the connection (as a network would) and reconnect.
  drop() {
    if (this.ws) this.ws.close();
  }

  scheduleRetry() {
    const base = Math.min(10000, 500 * 2 ** this.failures);
    const delay = Math.round(base * (0.75 + Math.random() / 2));
    this.failures += 1;
    this.onState('waiting', delay);
    this.retryTimer = setTimeout(() => this.connectNow(), delay);
  }

  schedulePing() {
    clearTimeout(this.pingTimer);
    this.pingTimer = setTimeout(() => {
      if (!this.isOpen) return;
      const watchdog = setTimeout(() => this.drop(), PONG_WAIT);
      this.request({ type: 'ping' })
        .catch(() => {})
        .finally(() => clearTimeout(watchdog));
      this.schedulePing();
    }, PING_EVERY);
  }

  receive(text) {
    let v;
    try {
      v = JSON.parse(text);
    } catch {
      return;
    }
    if (v.req !== undefined && this.pending.has(v.req)) {
      const { resolve, reject } = this.pending.get(v.req);
      this.pending.delete(v.req);
      if (v.type === 'error') reject(v);
      else resolve(v);
      return;
    }
    this.onPush(v);
  }

  // Send a request; resolves with its reply, rejects with the error reply
  // or with {code: "disconnected"} when the connection is lost first.
  request(body) {
    if (!this.isOpen) {
      return Promise.reject({ code: 'disconnected', message: 'not connected' });
    }
    const req = 'r' + this.nextReq++;
    const p = new Promise((resolve, reject) => this.pending.set(req, { resolve, reject }));
    this.ws.send(JSON.stringify({ ...body, req }));
    this.schedulePing();
    return p;
  }

  failAll() {
    for (const { reject } of this.pending.values()) {
      reject({ code: 'disconnected', message: 'the connection was lost' });
    }
    this.pending.clear();
  }
}
