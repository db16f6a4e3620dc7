// chatd's web client: what the user is doing, kept in `S`, and the actions
// that change it (through the server). view.js draws `S`; conn.js keeps the
// connection. proto.md documents every request used here.

import { Conn } from './conn.js';
import * as view from './view.js';

export const LOBBY = '2000000000';

// Everything the page knows. Ids of users and groups are numbers; message
// ids are strings (chatd sends them so over WebSocket: they are 64-bit).
const S = {
  me: null, // {id, name}
  friends: new Map(), // id -> {id, name, remark, online}
  incoming: new Map(), // id -> {id, name, text}
  outgoing: new Map(), // id -> {id, name}
  groups: new Map(), // id -> {id, name, desc, creator, role}
  convs: new Map(), // "u:ID" | "g:ID" -> conversation
  names: new Map(), // user id -> name, as last seen
  current: null, // key of the open conversation
  members: null, // {group, list} for the open member list
  outbox: [], // sends not confirmed yet: {cid, key, text, at}
  unread: {}, // key -> count (kept across reloads)
};

const store = {
  get(k) {
    try { return localStorage.getItem(k); } catch { return null; }
  },
  set(k, v) {
    try {
      if (v === null) localStorage.removeItem(k);
      else localStorage.setItem(k, v);
    } catch { /* private mode: nothing is kept */ }
  },
};

let resumed = false; // logged in on the current connection
let acks = [];
let ackTimer = null;

const conn = new Conn({
  onOpen: () => {
    const token = store.get('chatd.token');
    if (token) resume(token);
    else view.showAuth('');
  },
  onPush: (v) => push(v),
  onState: (state, delay) => {
    if (state !== 'open') resumed = false;
    view.connectionState(state, delay, S.me !== null);
  },
});

export function keyOf(m) {
  if (m.group !== undefined) return 'g:' + m.group;
  const other = m.from === S.me.id ? m.to : m.from;
  return 'u:' + other;
}

function conv(key) {
  let c = S.convs.get(key);
  if (!c) {
    const [kind, id] = key.split(':');
    c = { key, kind, id: Number(id), messages: [], loaded: false, more: true, loading: false, last: 0 };
    S.convs.set(key, c);
  }
  return c;
}

function cmpId(a, b) {
  const x = BigInt(a), y = BigInt(b);
  return x < y ? -1 : x > y ? 1 : 0;
}

// Put messages into their conversation, once each, in id order.
function merge(c, msgs) {
  for (const m of msgs) {
    const i = c.messages.findIndex((x) => (x.id && x.id === m.id) || (m.cid && x.cid === m.cid && x.from === m.from));
    if (i >= 0) {
      c.messages[i] = { ...c.messages[i], ...m, state: 'sent' };
      continue;
    }
    c.messages.push({ ...m, state: 'sent' });
    if (m.from_name) S.names.set(m.from, m.from_name);
  }
  // In time order (a message's ts is its id's time); ids order those of
  // one millisecond. Lines of our own and unconfirmed sends have our time.
  c.messages.sort((a, b) => (a.ts || 0) - (b.ts || 0) || (a.id && b.id ? cmpId(a.id, b.id) : 0));
  const newest = c.messages[c.messages.length - 1];
  if (newest) c.last = Math.max(c.last, newest.ts || Date.now());
  saveConvs();
}

function saveUnread() {
  if (S.me) store.set('chatd.unread.' + S.me.id, JSON.stringify(S.unread));
}

// The conversations of the list, so that a reload shows them again (the
// server keeps the messages; which conversations were recent is ours).
function saveConvs() {
  if (!S.me) return;
  const recent = [...S.convs.values()]
    .filter((c) => c.kind === 'u' && c.messages.length)
    .sort((a, b) => b.last - a.last)
    .slice(0, 100)
    .map((c) => {
      const last = [...c.messages].reverse().find((m) => !m.system);
      return { key: c.key, last: c.last, name: S.names.get(c.id) || null, text: last ? last.text.slice(0, 80) : '' };
    });
  store.set('chatd.convs.' + S.me.id, JSON.stringify(recent));
}

function restoreConvs() {
  const recent = JSON.parse(store.get('chatd.convs.' + S.me.id) || '[]');
  for (const r of recent) {
    const c = conv(r.key);
    c.last = r.last;
    c.preview = r.text;
    if (r.name) S.names.set(c.id, r.name);
  }
}

function saveOutbox() {
  if (S.me) store.set('chatd.outbox.' + S.me.id, JSON.stringify(S.outbox));
}

// ---- logging in -------------------------------------------------------

async function resume(token) {
  try {
    const r = await conn.request({ type: 'resume', token });
    await loggedIn(r);
  } catch (e) {
    if (e.code === 'disconnected') return;
    store.set('chatd.token', null);
    view.showAuth(e.code === 'invalid_token' ? 'Your session has ended; please log in again.' : explain(e));
  }
}

async function loggedIn(r) {
  if (r.token) store.set('chatd.token', r.token);
  const first = !S.me || S.me.id !== r.user.id;
  S.me = r.user;
  if (first) {
    S.friends.clear(); S.incoming.clear(); S.outgoing.clear(); S.groups.clear(); S.convs.clear();
    S.current = null;
    S.unread = JSON.parse(store.get('chatd.unread.' + S.me.id) || '{}');
    S.outbox = JSON.parse(store.get('chatd.outbox.' + S.me.id) || '[]');
    restoreConvs();
    for (const o of S.outbox) addOwn(o, 'queued');
  }
  resumed = true;
  view.showApp(S);
  await Promise.all([refreshFriends(), refreshGroups()]);
  if (S.current) await openConv(S.current, { refresh: true });
  flushOutbox();
}

export const A = {
  async login(who, password) {
    const body = /^[0-9]+$/.test(who) ? { type: 'login', id: Number(who), password } : { type: 'login', name: who, password };
    const r = await conn.request(body);
    await loggedIn(r);
  },

  async register(name, password) {
    await conn.request({ type: 'register', name, password });
    await A.login(name, password);
  },

  async logout() {
    try { await conn.request({ type: 'logout' }); } catch { /* the token goes anyway */ }
    store.set('chatd.token', null);
    S.me = null;
    resumed = false;
    view.showAuth('You are logged out.');
  },

  async passwd(old, now) {
    await conn.request({ type: 'passwd', old, new: now });
    // Every token of the account ended with the old password: get one anew.
    await A.login(String(S.me.id), now);
  },

  retry() { conn.connectNow(); },

  // ---- conversations --------------------------------------------------

  open: (key) => openConv(key, {}),

  async older() {
    const c = S.convs.get(S.current);
    if (!c || c.loading || !c.more) return;
    await loadHistory(c);
  },

  send(text) {
    const c = S.convs.get(S.current);
    if (!c) return;
    const o = { cid: 'w' + Date.now().toString(36) + Math.random().toString(36).slice(2, 8), key: c.key, text };
    S.outbox.push(o);
    saveOutbox();
    addOwn(o, conn.isOpen && resumed ? 'sending' : 'queued');
    view.renderConv(S);
    view.renderList(S);
    if (conn.isOpen && resumed) sendOne(o);
  },

  // ---- friends --------------------------------------------------------

  async search(query) { return (await conn.request({ type: 'search', query })).users; },
  async befriend(id, name) {
    await conn.request({ type: 'friend_request', user: id, text: '' });
    if (!S.friends.has(id)) S.outgoing.set(id, { id, name });
    await refreshFriends();
  },
  async accept(id) { await conn.request({ type: 'friend_accept', user: id }); await refreshFriends(); },
  async decline(id) { await conn.request({ type: 'friend_decline', user: id }); S.incoming.delete(id); view.renderFriends(S); },
  async unfriend(id) { await conn.request({ type: 'friend_remove', user: id }); await refreshFriends(); },
  async remark(id, remark) { await conn.request({ type: 'friend_remark', user: id, remark }); await refreshFriends(); },

  // ---- groups ---------------------------------------------------------

  async createGroup(name, desc) {
    const r = await conn.request({ type: 'group_create', name, desc });
    S.groups.set(r.group.id, r.group);
    view.renderGroups(S);
    await openConv('g:' + r.group.id, {});
  },
  async joinGroup(id) {
    await conn.request({ type: 'group_join', group: Number(id) });
    await refreshGroups();
    await openConv('g:' + id, {});
  },
  async leaveGroup(id) {
    await conn.request({ type: 'group_leave', group: id });
    dropGroup(id);
  },
  async dissolveGroup(id) {
    await conn.request({ type: 'group_dissolve', group: id });
    dropGroup(id);
  },
  async invite(group, user) { await conn.request({ type: 'group_invite', group, user: Number(user) }); await A.members(group); },
  async kick(group, user) { await conn.request({ type: 'group_kick', group, user }); await A.members(group); },
  async role(group, user, role) { await conn.request({ type: 'group_role', group, user, role }); await A.members(group); },
  async updateGroup(group, name, desc) {
    await conn.request({ type: 'group_update', group, name, desc });
    await refreshGroups();
  },
  async members(group) {
    const r = await conn.request({ type: 'group_members', group });
    for (const m of r.members) S.names.set(m.id, m.name);
    S.members = { group, list: r.members };
    view.renderMembers(S);
  },

  name: displayName,
  explain,
};

function addOwn(o, state) {
  const c = conv(o.key);
  if (c.messages.some((m) => m.cid === o.cid)) return;
  c.messages.push({ id: null, cid: o.cid, from: S.me.id, from_name: S.me.name, text: o.text, ts: Date.now(), state });
  c.last = Date.now();
  saveConvs();
}

async function sendOne(o) {
  const [kind, id] = o.key.split(':');
  const body = { type: 'send', text: o.text, cid: o.cid };
  if (kind === 'g') body.group = Number(id);
  else body.to = Number(id);
  const c = conv(o.key);
  const mine = () => c.messages.find((m) => m.cid === o.cid && m.from === S.me.id);
  try {
    const r = await conn.request(body);
    S.outbox = S.outbox.filter((x) => x.cid !== o.cid);
    saveOutbox();
    const m = mine();
    if (m) Object.assign(m, { id: r.id, ts: r.ts, state: 'sent' });
    merge(c, []);
  } catch (e) {
    const m = mine();
    if (e.code === 'disconnected') {
      // Sent again, with the same cid, once we are back: never twice.
      if (m) m.state = 'queued';
    } else {
      S.outbox = S.outbox.filter((x) => x.cid !== o.cid);
      saveOutbox();
      if (m) Object.assign(m, { state: 'failed', error: explain(e) });
    }
  }
  view.renderConv(S);
}

function flushOutbox() {
  for (const o of [...S.outbox]) {
    const m = conv(o.key).messages.find((x) => x.cid === o.cid);
    if (m) m.state = 'sending';
    sendOne(o);
  }
  view.renderConv(S);
}

async function openConv(key, { refresh }) {
  const c = conv(key);
  S.current = key;
  if (S.members && (c.kind !== 'g' || S.members.group !== c.id)) {
    S.members = null;
    view.renderMembers(S);
  }
  S.unread[key] = 0;
  saveUnread();
  view.renderConv(S);
  view.renderList(S);
  if (!c.loaded || refresh) {
    c.loaded = true;
    c.more = true;
    await loadHistory(c, refresh);
  }
  if (c.kind === 'g' && S.members && S.members.group === c.id) await A.members(c.id).catch(() => {});
}

async function loadHistory(c, latest) {
  c.loading = true;
  view.renderConv(S);
  const body = { type: 'history', limit: 50 };
  if (c.kind === 'g') body.group = c.id;
  else body.with = c.id;
  const known = c.messages.filter((m) => m.id);
  if (!latest && known.length) body.before = known[0].id;
  try {
    const r = await conn.request(body);
    merge(c, r.messages);
    if (!latest || !known.length) c.more = r.more;
  } catch (e) {
    view.chatError(explain(e));
  } finally {
    c.loading = false;
  }
  view.renderConv(S, { kept: !latest });
  view.renderList(S);
}

async function refreshFriends() {
  const r = await conn.request({ type: 'friends' });
  S.friends = new Map(r.friends.map((f) => [f.id, f]));
  S.incoming = new Map(r.incoming.map((f) => [f.id, f]));
  S.outgoing = new Map(r.outgoing.map((f) => [f.id, f]));
  for (const f of r.friends) S.names.set(f.id, f.name);
  view.renderFriends(S);
  view.renderList(S);
}

async function refreshGroups() {
  const r = await conn.request({ type: 'groups' });
  S.groups = new Map(r.groups.map((g) => [g.id, g]));
  for (const g of r.groups) conv('g:' + g.id);
  view.renderGroups(S);
  view.renderList(S);
}

function dropGroup(id) {
  S.groups.delete(id);
  S.convs.delete('g:' + id);
  if (S.current === 'g:' + id) S.current = null;
  if (S.members && S.members.group === id) S.members = null;
  view.renderGroups(S);
  view.renderList(S);
  view.renderConv(S);
  view.renderMembers(S);
}

function displayName(id) {
  const f = S.friends.get(id);
  if (f) return f.remark || f.name;
  return S.names.get(id) || 'user ' + id;
}

// ---- pushes -----------------------------------------------------------

function ack(id) {
  acks.push(id);
  if (!ackTimer) {
    ackTimer = setTimeout(() => {
      const ids = acks;
      acks = [];
      ackTimer = null;
      // Lost acks only mean the messages come again (and are dropped then).
      conn.request({ type: 'ack', ids }).catch(() => {});
    }, 150);
  }
}

function push(v) {
  switch (v.type) {
    case 'message': {
      if (!S.me) return;
      const key = keyOf(v);
      const c = conv(key);
      const seen = c.messages.some((m) => m.id === v.id);
      merge(c, [v]);
      ack(v.id);
      if (!seen && (key !== S.current || document.hidden)) {
        S.unread[key] = (S.unread[key] || 0) + 1;
        saveUnread();
      }
      if (key === S.current) view.renderConv(S);
      view.renderList(S);
      break;
    }
    case 'presence': {
      const f = S.friends.get(v.user.id);
      if (f) f.online = v.online;
      view.renderFriends(S);
      view.renderList(S);
      view.renderConv(S);
      break;
    }
    case 'friend_request':
      S.incoming.set(v.from.id, { id: v.from.id, name: v.from.name, text: v.text });
      view.toast(`${v.from.name} wants to be your friend.`);
      view.renderFriends(S);
      break;
    case 'friend_added':
    case 'friend_removed':
      refreshFriends().catch(() => {});
      view.clearSearch();
      break;
    case 'friend_declined':
      S.outgoing.delete(v.user.id);
      view.toast(`${v.user.name} declined your friend request.`);
      view.renderFriends(S);
      break;
    case 'group_event':
      groupEvent(v);
      break;
    case 'notice':
      view.toast(v.text);
      break;
    case 'bye':
      if (v.reason === 'kicked' || v.reason === 'banned' || v.reason === 'account_deleted') {
        store.set('chatd.token', null);
        S.me = null;
        view.showAuth(explain({ code: v.reason }));
      } else {
        view.toast(explain({ code: v.reason }));
      }
      break;
    case 'error':
      view.toast(explain(v));
      break;
    default:
      break;
  }
}

function groupEvent(v) {
  const mine = S.me && v.user === S.me.id;
  if (mine && (v.event === 'kicked' || v.event === 'left' || v.event === 'dissolved')) {
    if (v.event !== 'left') view.toast(`You are no longer in ${S.groups.get(v.group)?.name || 'a group'}.`);
    dropGroup(v.group);
    return;
  }
  if (v.event === 'dissolved') {
    dropGroup(v.group);
    return;
  }
  const c = conv('g:' + v.group);
  const who = v.user === S.me?.id ? 'You' : displayName(v.user);
  const lines = { joined: `${who} joined`, left: `${who} left`, invited: `${who} was added`, kicked: `${who} was removed`, promoted: `${who} is now an admin`, demoted: `${who} is no longer an admin`, updated: 'The group was edited' };
  c.messages.push({ id: null, system: true, text: lines[v.event] || v.event, ts: Date.now() });
  merge(c, []);
  if (mine || v.event === 'updated' || v.event === 'promoted' || v.event === 'demoted') refreshGroups().catch(() => {});
  if (S.members && S.members.group === v.group) A.members(v.group).catch(() => {});
  if (S.current === c.key) view.renderConv(S);
}

// ---- errors in words -----------------------------------------------------

const WORDS = {
  invalid_credentials: 'That name (or id) and password do not match.',
  invalid_token: 'Your session has ended; please log in again.',
  name_taken: 'That name is taken; pick another one.',
  invalid_password: 'A password must be 1 to 128 bytes long.',
  banned: 'This account is banned.',
  kicked: 'The operator ended your session.',
  account_deleted: 'This account was deleted.',
  shutting_down: 'The server is restarting; reconnecting…',
  too_many_sessions: 'This account has too many sessions open; log out somewhere else first.',
  unknown_user: 'There is no such user.',
  unknown_group: 'There is no such group (or it was dissolved).',
  not_member: 'You are not a member of that group.',
  already_member: 'That user is in the group already.',
  forbidden: 'Your role in this group does not allow that.',
  creator_cannot_leave: 'The creator cannot leave; dissolve the group instead.',
  empty_text: 'Write something first.',
  text_too_long: 'That message is too long (4096 bytes at most).',
  already_friends: 'You are friends already.',
  not_friends: 'That user is not your friend.',
  no_request: 'That request is gone.',
  self_target: 'You cannot do that to yourself.',
  rate_limited: 'You are sending very fast; the server is slowing down.',
  storage_full: 'The server’s disk is full: nothing can be changed right now (reading still works).',
  busy: 'The server is busy; try again in a moment.',
  disconnected: 'Not connected right now; try again once the connection is back.',
  idle_timeout: 'The connection was idle for too long; reconnecting.',
  internal: 'Something went wrong on the server; nothing was changed.',
};

export function explain(e) {
  if (!e) return '';
  if (e.code === 'too_many_attempts') {
    const s = Math.ceil((e.retry_after_ms || 1000) / 1000);
    return `Too many failed attempts; try again in ${s} s.`;
  }
  if (WORDS[e.code]) return WORDS[e.code];
  // The server's message says what is wrong (names, limits, fields).
  const m = e.message || e.code || String(e);
  return m.charAt(0).toUpperCase() + m.slice(1) + (m.endsWith('.') ? '' : '.');
}

view.init(S, A);
if (!store.get('chatd.token')) view.showAuth('');
conn.start();
window.addEventListener('online', () => conn.connectNow());
document.addEventListener('visibilitychange', () => {
  if (document.hidden) return;
  if (!conn.isOpen) conn.connectNow();
  if (S.current && S.unread[S.current]) {
    S.unread[S.current] = 0;
    saveUnread();
    view.renderList(S);
  }
});
