// Drawing the page from the app's state, and turning what the user does
// into the app's actions. Text from other people only ever goes in as
// text (textContent), never as HTML.

let S = null;
let A = null;
const $ = (id) => document.getElementById(id);

function h(tag, props = {}, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === 'class') el.className = v;
    else if (k === 'onclick') el.addEventListener('click', v);
    else if (k === 'text') el.textContent = v;
    else if (v !== undefined && v !== null && v !== false) el.setAttribute(k, v === true ? '' : v);
  }
  for (const kid of kids.flat()) {
    if (kid !== null && kid !== undefined && kid !== false) el.append(kid);
  }
  return el;
}

function button(text, onclick, props = {}) {
  return h('button', { type: 'button', ...props, onclick }, text);
}

// Run an action; show its error in words where the user is looking.
function act(where, fn) {
  return async (...args) => {
    where.textContent = '';
    try {
      await fn(...args);
    } catch (e) {
      where.textContent = A.explain(e);
    }
  };
}

const time = (ts) => new Date(ts).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });

// ---- screens ------------------------------------------------------------

export function showAuth(message) {
  $('app').hidden = true;
  $('auth').hidden = false;
  $('auth-error').textContent = message || '';
  $('login-password').value = '';
  $('register-password').value = '';
  $('register-password2').value = '';
  $('register-form').hidden = true;
  $('login-form').hidden = false;
  $('login-name').focus();
}

export function showApp(state) {
  $('auth').hidden = true;
  $('app').hidden = false;
  $('me-name').textContent = state.me.name;
  $('me-id').textContent = '#' + state.me.id;
  document.title = `chatd — ${state.me.name}`;
  renderList(state);
  renderConv(state);
}

let bannerTimer = null;
let lost = false; // the banner said the connection was lost
export function connectionState(state, delay, loggedIn) {
  const b = $('banner');
  clearTimeout(bannerTimer);
  $('banner-retry').hidden = state !== 'waiting';
  if (state === 'open') {
    if (lost) {
      $('banner-text').textContent = 'Connected again.';
      bannerTimer = setTimeout(() => { b.hidden = true; }, 1500);
    } else {
      b.hidden = true;
    }
    lost = false;
    return;
  }
  const say = () => {
    b.hidden = false;
    b.className = 'banner warn';
    if (state === 'connecting') {
      $('banner-text').textContent = loggedIn || lost ? 'Reconnecting…' : 'Connecting…';
    } else {
      lost = true;
      const s = Math.max(1, Math.round(delay / 1000));
      $('banner-text').textContent = `Connection lost. Trying again in ${s} s. What you write meanwhile is sent when it is back.`;
    }
  };
  // A quick first connection needs no banner.
  if (state === 'connecting' && !lost) bannerTimer = setTimeout(say, 800);
  else say();
}

let toastTimer = null;
export function toast(text) {
  const t = $('toast');
  t.textContent = text;
  t.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { t.hidden = true; }, 5000);
}

export function chatError(text) {
  $('chat-error').textContent = text;
}

// ---- the conversation list ------------------------------------------------

function convName(c) {
  if (c.kind === 'g') return S.groups.get(c.id)?.name || 'group ' + c.id;
  return A.name(c.id);
}

export function renderList(state) {
  S = state;
  if (!S.me) return;
  const convs = [...S.convs.values()].filter(
    (c) => (c.kind === 'g' ? S.groups.has(c.id) : c.messages.length > 0 || c.preview !== undefined || S.friends.has(c.id) || c.key === S.current),
  );
  convs.sort((a, b) => b.last - a.last || convName(a).localeCompare(convName(b)));
  const items = convs.map((c) => {
    const last = [...c.messages].reverse().find((m) => !m.system);
    const unread = S.unread[c.key] || 0;
    const friend = c.kind === 'u' ? S.friends.get(c.id) : null;
    const label = `${convName(c)}${unread ? `, ${unread} unread` : ''}`;
    return h('li', {},
      button([
        h('span', { class: 'dot ' + (friend?.online ? 'on' : c.kind === 'g' ? 'group' : 'off'), 'aria-hidden': 'true' }),
        h('span', { class: 'conv-text' },
          h('span', { class: 'conv-name', text: convName(c) }),
          h('span', { class: 'conv-last muted', text: last ? last.text.slice(0, 80) : c.preview || (c.kind === 'g' ? 'group' : '') })),
        unread ? h('span', { class: 'badge', text: String(unread) }) : null,
      ], () => A.open(c.key), {
        class: 'conv' + (c.key === S.current ? ' current' : ''),
        'aria-label': label,
        'aria-current': c.key === S.current ? 'true' : null,
        'data-conv': c.key,
      }));
  });
  $('conv-list').replaceChildren(...items);
  $('conv-empty').hidden = items.length > 0;
}

// ---- friends ----------------------------------------------------------------

export function renderFriends(state) {
  S = state;
  const err = $('chat-error');
  const inc = [...S.incoming.values()].map((r) =>
    h('li', { class: 'item' },
      h('span', { class: 'grow' }, h('strong', { text: r.name }), ' ', h('span', { class: 'muted', text: '#' + r.id }),
        r.text ? h('div', { class: 'muted', text: r.text }) : null),
      button('Accept', act(err, () => A.accept(r.id)), { 'aria-label': `Accept ${r.name}` }),
      button('Decline', act(err, () => A.decline(r.id)), { 'aria-label': `Decline ${r.name}` })));
  $('incoming-list').replaceChildren(...inc);
  $('incoming-title').hidden = inc.length === 0;
  const out = [...S.outgoing.values()].map((r) =>
    h('li', { class: 'item' },
      h('span', { class: 'grow' }, h('strong', { text: r.name }), ' ', h('span', { class: 'muted', text: 'asked' })),
      button('Withdraw', act(err, () => A.unfriend(r.id)), { 'aria-label': `Withdraw the request to ${r.name}` })));
  $('outgoing-list').replaceChildren(...out);
  $('outgoing-title').hidden = out.length === 0;
  const badge = $('requests-badge');
  badge.hidden = S.incoming.size === 0;
  badge.textContent = String(S.incoming.size);
  const friends = [...S.friends.values()].sort((a, b) => b.online - a.online || A.name(a.id).localeCompare(A.name(b.id)));
  $('friend-list').replaceChildren(...friends.map((f) => friendItem(f, err)));
  $('friends-empty').hidden = friends.length > 0;
}

function friendItem(f, err) {
  const li = h('li', { class: 'item' });
  const shown = A.name(f.id);
  const rename = button('Rename', () => {
    const input = h('input', { value: f.remark || '', maxlength: '50', 'aria-label': `Private name for ${f.name}` });
    const form = h('form', { class: 'row' }, input, h('button', { type: 'submit' }, 'Save'));
    form.addEventListener('submit', (ev) => {
      ev.preventDefault();
      act(err, () => A.remark(f.id, input.value.trim()))();
    });
    li.replaceChildren(form);
    input.focus();
  }, { 'aria-label': `Rename ${shown}` });
  let sure = false;
  const remove = button('Remove', (ev) => {
    if (!sure) {
      sure = true;
      ev.target.textContent = 'Really remove?';
      return;
    }
    act(err, () => A.unfriend(f.id))();
  }, { class: 'danger', 'aria-label': `Remove ${shown}` });
  li.append(
    h('span', { class: 'dot ' + (f.online ? 'on' : 'off'), title: f.online ? 'online' : 'offline' }),
    h('span', { class: 'grow' }, h('strong', { text: shown }),
      f.remark ? h('span', { class: 'muted', text: ` (${f.name})` }) : null,
      h('span', { class: 'sr-only', text: f.online ? ', online' : ', offline' })),
    h('span', { class: 'actions' },
      button('Message', () => A.open('u:' + f.id), { 'aria-label': `Message ${shown}` }),
      rename, remove));
  return li;
}

async function search(ev) {
  ev.preventDefault();
  const err = $('chat-error');
  const q = $('search-query').value.trim();
  if (!q) return;
  try {
    const users = await A.search(q);
    const items = users.map((u) => {
      const state = u.id === S.me.id ? 'you' : S.friends.has(u.id) ? 'friend' : S.outgoing.has(u.id) ? 'asked' : null;
      return h('li', { class: 'item' },
        h('span', { class: 'grow' }, h('strong', { text: u.name }), ' ', h('span', { class: 'muted', text: '#' + u.id })),
        u.id !== S.me.id ? button('Message', () => A.open('u:' + u.id), { 'aria-label': `Message ${u.name}` }) : null,
        state ? h('span', { class: 'muted', text: state }) :
          button('Add friend', act(err, async () => { await A.befriend(u.id, u.name); ev.target.dispatchEvent(new Event('submit')); }), { 'aria-label': `Add ${u.name} as a friend` }));
    });
    for (const u of users) S.names.set(u.id, u.name);
    $('search-results').replaceChildren(...(items.length ? items : [h('li', { class: 'muted', text: 'Nobody by that name or id.' })]));
  } catch (e) {
    $('search-results').replaceChildren(h('li', { class: 'error', text: A.explain(e) }));
  }
}

export function clearSearch() {
  $('search-results').replaceChildren();
}

// ---- groups -----------------------------------------------------------------

export function renderGroups(state) {
  S = state;
  const groups = [...S.groups.values()].sort((a, b) => a.name.localeCompare(b.name));
  $('group-list').replaceChildren(...groups.map((g) =>
    h('li', { class: 'item' },
      h('span', { class: 'grow' }, h('strong', { text: g.name }), ' ', h('span', { class: 'muted', text: `#${g.id} · ${g.role}` })),
      button('Open', () => A.open('g:' + g.id), { 'aria-label': `Open ${g.name}` }))));
  if (S.current) renderHead();
}

export function renderMembers(state) {
  S = state;
  const panel = $('members');
  const c = S.convs.get(S.current);
  if (!S.members || !c || c.kind !== 'g' || S.members.group !== c.id) {
    panel.hidden = true;
    return;
  }
  const g = S.groups.get(c.id) || {};
  const mine = g.role;
  const rank = { creator: 3, admin: 2, member: 1 };
  const err = $('members-error');
  $('members-title').textContent = `Members of ${g.name || 'the group'}`;
  $('group-info').textContent = g.desc || '';
  const items = S.members.list.map((m) => {
    const me = m.id === S.me.id;
    const acts = [];
    if (!me && !m.guest && rank[mine] > rank[m.role]) {
      acts.push(button('Remove', act(err, () => A.kick(c.id, m.id)), { 'aria-label': `Remove ${m.name} from the group` }));
    }
    if (!me && mine === 'creator' && m.role !== 'creator' && !m.guest) {
      const to = m.role === 'admin' ? 'member' : 'admin';
      acts.push(button(to === 'admin' ? 'Make admin' : 'Make member', act(err, () => A.role(c.id, m.id, to)), { 'aria-label': `Make ${m.name} ${to === 'admin' ? 'an admin' : 'a member'}` }));
    }
    return h('li', { class: 'item' },
      h('span', { class: 'dot ' + (m.online ? 'on' : 'off'), title: m.online ? 'online' : 'offline' }),
      h('span', { class: 'grow' }, h('strong', { text: m.name + (me ? ' (you)' : '') }),
        m.guest ? h('span', { class: 'badge guest', text: 'guest' }) : null,
        h('span', { class: 'muted', text: ' ' + m.role }),
        h('span', { class: 'sr-only', text: m.online ? ', online' : ', offline' })),
      ...acts);
  });
  $('member-list').replaceChildren(...items);
  const staff = mine === 'creator' || mine === 'admin';
  $('group-update-form').hidden = !staff;
  if (staff && document.activeElement?.form !== $('group-update-form')) {
    $('group-edit-name').value = g.name || '';
    $('group-edit-desc').value = g.desc || '';
  }
  $('leave-group').hidden = mine === 'creator';
  $('dissolve-group').hidden = mine !== 'creator';
  panel.hidden = false;
}

// ---- the open conversation ----------------------------------------------------

function renderHead() {
  const c = S.convs.get(S.current);
  if (!c) return;
  $('chat-title').textContent = convName(c);
  if (c.kind === 'g') {
    const g = S.groups.get(c.id);
    $('chat-sub').textContent = g ? `group #${g.id}${g.desc ? ' · ' + g.desc : ''}` : '';
  } else {
    const f = S.friends.get(c.id);
    $('chat-sub').textContent = f ? (f.online ? 'online' : 'offline') : `#${c.id} · not a friend`;
  }
  $('open-members').hidden = c.kind !== 'g';
}

function messageItem(m, c) {
  if (m.system) return h('li', { class: 'msg system', text: m.text });
  const mine = S.me && m.from === S.me.id;
  const states = { sending: 'sending…', queued: 'waiting for the connection', failed: 'not sent' };
  return h('li', { class: 'msg ' + (mine ? 'mine' : 'theirs'), 'data-id': m.id || '', 'data-cid': m.cid || '' },
    h('div', { class: 'meta' },
      c.kind === 'g' && !mine ? h('span', { class: 'from', text: m.from_name || A.name(m.from) }) : null,
      m.guest ? h('span', { class: 'badge guest', text: 'guest' }) : null,
      h('time', { text: time(m.ts || Date.now()) }),
      mine && m.state !== 'sent' ? h('span', { class: 'state ' + m.state, text: states[m.state] }) : null,
      mine && m.state === 'sent' ? h('span', { class: 'state sent', title: 'stored by the server', text: '✓' }) : null),
    h('div', { class: 'text', text: m.text }),
    m.error ? h('div', { class: 'error', text: m.error }) : null);
}

export function renderConv(state, { kept } = {}) {
  S = state;
  const c = S.convs.get(S.current);
  document.body.classList.toggle('in-chat', !!c);
  $('composer').hidden = !c;
  if (!c) {
    $('chat-title').textContent = 'Pick a conversation';
    $('chat-sub').textContent = '';
    $('open-members').hidden = true;
    $('messages').replaceChildren();
    $('history-state').textContent = '';
    return;
  }
  renderHead();
  const box = $('messages-box');
  const fromBottom = box.scrollHeight - box.scrollTop;
  const nearBottom = fromBottom - box.clientHeight < 80;
  const prevKey = box.dataset.conv;
  $('messages').replaceChildren(...c.messages.map((m) => messageItem(m, c)));
  const hs = $('history-state');
  hs.replaceChildren(c.loading ? 'Loading…' : c.more ? button('Load older messages', () => A.older(), { id: 'load-older', class: 'link' }) : 'This is the beginning of the conversation.');
  box.dataset.conv = c.key;
  if (kept && prevKey === c.key) box.scrollTop = box.scrollHeight - fromBottom;
  else if (nearBottom || prevKey !== c.key) box.scrollTop = box.scrollHeight;
}

// ---- wiring -----------------------------------------------------------------

function tab(name) {
  for (const t of ['chats', 'friends', 'groups']) {
    $('tab-' + t).setAttribute('aria-selected', String(t === name));
    $('panel-' + t).hidden = t !== name;
  }
}

function submit(id, where, fn) {
  $(id).addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const btn = ev.target.querySelector('button[type=submit]');
    btn.disabled = true;
    try {
      await act(where, fn)();
    } finally {
      btn.disabled = false;
    }
  });
}

export function init(state, actions) {
  S = state;
  A = actions;
  const authErr = $('auth-error');
  $('show-register').addEventListener('click', () => { $('login-form').hidden = true; $('register-form').hidden = false; authErr.textContent = ''; $('register-name').focus(); });
  $('show-login').addEventListener('click', () => { $('register-form').hidden = true; $('login-form').hidden = false; authErr.textContent = ''; $('login-name').focus(); });
  submit('login-form', authErr, () => A.login($('login-name').value.trim(), $('login-password').value));
  submit('register-form', authErr, async () => {
    if ($('register-password').value !== $('register-password2').value) throw { code: 'mismatch', message: 'the two passwords differ' };
    await A.register($('register-name').value.trim(), $('register-password').value);
  });
  $('logout').addEventListener('click', () => A.logout());
  $('banner-retry').addEventListener('click', () => A.retry());
  for (const t of ['chats', 'friends', 'groups']) $('tab-' + t).addEventListener('click', () => tab(t));
  $('search-form').addEventListener('submit', search);
  const chatErr = $('chat-error');
  submit('group-create-form', chatErr, async () => {
    await A.createGroup($('group-name').value.trim(), $('group-desc').value.trim());
    $('group-name').value = '';
    $('group-desc').value = '';
  });
  submit('group-join-form', chatErr, async () => { await A.joinGroup($('group-join-id').value.trim()); $('group-join-id').value = ''; });
  $('join-lobby').addEventListener('click', act(chatErr, () => A.joinGroup('2000000000')));
  const text = $('composer-text');
  $('composer').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const t = text.value;
    if (!t.trim()) return;
    chatErr.textContent = '';
    A.send(t);
    text.value = '';
    text.focus();
  });
  text.addEventListener('keydown', (ev) => {
    if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing) {
      ev.preventDefault();
      $('composer').requestSubmit();
    }
  });
  $('messages-box').addEventListener('scroll', () => {
    if ($('messages-box').scrollTop < 40) A.older();
  });
  $('back').addEventListener('click', () => document.body.classList.remove('in-chat'));
  $('open-members').addEventListener('click', act(chatErr, async () => { await A.members(S.convs.get(S.current).id); $('member-list').querySelector('button')?.focus(); }));
  $('close-members').addEventListener('click', () => { S.members = null; $('members').hidden = true; $('open-members').focus(); });
  const memErr = $('members-error');
  submit('invite-form', memErr, async () => { await A.invite(S.members.group, $('invite-id').value.trim()); $('invite-id').value = ''; });
  submit('group-update-form', memErr, () => A.updateGroup(S.members.group, $('group-edit-name').value.trim(), $('group-edit-desc').value.trim()));
  $('leave-group').addEventListener('click', act(memErr, () => A.leaveGroup(S.members.group)));
  let sure = false;
  $('dissolve-group').addEventListener('click', act(memErr, async () => {
    if (!sure) { sure = true; $('dissolve-group').textContent = 'Really dissolve? Click again'; return; }
    sure = false;
    $('dissolve-group').textContent = 'Dissolve the group';
    await A.dissolveGroup(S.members.group);
  }));
  $('open-settings').addEventListener('click', () => { $('settings').hidden = false; $('passwd-old').focus(); });
  $('close-settings').addEventListener('click', () => { $('settings').hidden = true; $('open-settings').focus(); });
  const pwRes = $('passwd-result');
  submit('passwd-form', pwRes, async () => {
    await A.passwd($('passwd-old').value, $('passwd-new').value);
    $('passwd-old').value = '';
    $('passwd-new').value = '';
    pwRes.textContent = 'Your password is changed.';
  });
  document.addEventListener('keydown', (ev) => {
    if (ev.key !== 'Escape') return;
    if (!$('settings').hidden) $('close-settings').click();
    else if (!$('members').hidden) $('close-members').click();
    else document.body.classList.remove('in-chat');
  });
}
