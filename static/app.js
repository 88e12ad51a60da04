// The booking page: a plain ES module, no framework, no build step.
//
// Statuses come from GET /slots/stream (a snapshot, then one event per change). The page reads
// that stream with fetch() rather than EventSource, because EventSource cannot send an
// Authorization header and the token must never go into a URL. Without the stream the page
// still works: it loads the grid once over GET /slots and re-reads what its own actions change.

// The bearer token is kept in sessionStorage: it survives a reload of this tab, is gone when the
// tab closes, and, unlike a cookie, is never sent by the browser on its own. It is sent only as
// an Authorization header, never in a URL.
const TOKEN_KEY = "booking.token";
const ROOM_KEY = "booking.room";
const HEARTBEAT_TIMEOUT_MS = 60_000; // no byte for this long (not even a ": ping"): reconnect
const RETRY_MIN_MS = 1_000;
const RETRY_MAX_MS = 15_000;
const STREAM_PROBLEMS_TO_SHOW = new Set(["ROOM_NOT_FOUND", "INVALID_TOKEN", "MISSING_TOKEN", "UNAUTHENTICATED"]);

const $ = (id) => document.getElementById(id);

const state = {
  token: sessionStorage.getItem(TOKEN_KEY),
  user: null,
  rooms: [],
  roomId: null,
  day: null, // "YYYY-MM-DD" in the browser's zone
  slots: new Map(), // id -> SlotRead, for the chosen room and day
  holds: [], // the caller's live holds (HoldRead)
  bookings: [], // the caller's bookings (HoldRead, CONFIRMED)
  slotInfo: new Map(), // slot id -> SlotRead, for the holds and bookings lists
  live: false,
  loaded: false, // the grid holds a snapshot or a GET /slots answer for the chosen room and day
};

// ---------------------------------------------------------------- times, in the browser's zone

const timeFormat = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });
const dayFormat = new Intl.DateTimeFormat(undefined, { weekday: "short", day: "numeric", month: "short" });
const zoneName = Intl.DateTimeFormat().resolvedOptions().timeZone;

function localDay(date) {
  const pad = (n) => String(n).padStart(2, "0");
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}`;
}

function dayRange(day) {
  const [y, m, d] = day.split("-").map(Number);
  return { from: new Date(y, m - 1, d), to: new Date(y, m - 1, d + 1) };
}

/** "18:05" today, "Tue 3 Jun, 18:05" on another day. */
function when(iso) {
  const date = new Date(iso);
  const time = timeFormat.format(date);
  return localDay(date) === localDay(new Date()) ? time : `${dayFormat.format(date)}, ${time}`;
}

function span(slot) {
  return `${timeFormat.format(new Date(slot.start_time))}–${timeFormat.format(new Date(slot.end_time))}`;
}

function countdown(iso, now = Date.now()) {
  const seconds = Math.max(0, Math.ceil((Date.parse(iso) - now) / 1000));
  const h = Math.floor(seconds / 3600);
  const m = Math.floor((seconds % 3600) / 60);
  const s = String(seconds % 60).padStart(2, "0");
  return h ? `${h}:${String(m).padStart(2, "0")}:${s}` : `${m}:${s}`;
}

// ---------------------------------------------------------------- the API and its problems

class ApiError extends Error {
  constructor(status, problem) {
    super(problem.detail || problem.title || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

async function readProblem(response) {
  const text = await response.text().catch(() => "");
  try {
    const body = JSON.parse(text);
    if (body && typeof body === "object") return body;
  } catch {
    // not JSON: fall through
  }
  return { status: response.status, title: response.statusText, detail: text.slice(0, 200) };
}

async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (state.token) headers.Authorization = `Bearer ${state.token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
    });
  } catch {
    throw new ApiError(0, { code: "NETWORK", detail: "The service cannot be reached. Check the connection and try again." });
  }
  if (!response.ok) throw new ApiError(response.status, await readProblem(response));
  return response.status === 204 ? null : response.json();
}

/** A problem+json body as a sentence for people. */
function describeProblem(problem) {
  const p = problem || {};
  switch (p.code) {
    case "SLOT_UNAVAILABLE":
      if (p.slot_status === "HELD_BY_ME") {
        return p.held_until ? `You already hold this slot, until ${when(p.held_until)}.` : "You already hold this slot.";
      }
      if (p.slot_status === "BOOKED") return "This slot is already booked.";
      return p.held_until
        ? `This slot is held by another user until ${when(p.held_until)}.`
        : "This slot is held by another user.";
    case "SLOT_STARTED":
      return "This slot has already started.";
    case "SLOT_NOT_FOUND":
      return "This slot no longer exists.";
    case "ROOM_NOT_FOUND":
      return "This room no longer exists.";
    case "HOLD_EXPIRED":
      return "Your hold has expired; the slot may be free again.";
    case "HOLD_RELEASED":
      return "This hold was already released.";
    case "HOLD_CANCELLED":
      return "This booking was already cancelled.";
    case "HOLD_CONFIRMED":
      return "This hold is already a booking; cancel the booking instead.";
    case "HOLD_NOT_CONFIRMED":
      return "Only a booking can be cancelled; release a hold instead.";
    case "EXTENSION_LIMIT_REACHED":
      return "This hold cannot be extended again.";
    case "NOT_HOLD_OWNER":
    case "USER_MISMATCH":
      return "This belongs to another user.";
    case "HOLD_NOT_FOUND":
      return "This hold no longer exists.";
    case "HANDLE_TAKEN":
      return "That handle is taken; choose another.";
    case "INVALID_TOKEN":
    case "MISSING_TOKEN":
    case "UNAUTHENTICATED":
      return "That token is not valid. Sign up, or paste a token you were given.";
    case "DATABASE_BUSY":
    case "DATABASE_UNAVAILABLE":
      return "The service is busy; try again in a moment.";
    case "NETWORK":
      return p.detail;
    case "VALIDATION_ERROR": {
      const first = Array.isArray(p.errors) && p.errors[0];
      const field = first && Array.isArray(first.loc) ? first.loc[first.loc.length - 1] : null;
      return first ? `Please check ${field ? `the ${field}` : "the form"}: ${first.msg}.` : "Please check the form.";
    }
    default:
      return p.detail || p.title || "Something went wrong.";
  }
}

function say(text, kind = "info") {
  const box = $("message");
  box.dataset.kind = kind;
  // Emptying first makes a screen reader announce a repeated message again.
  box.textContent = "";
  setTimeout(() => {
    box.textContent = text;
  }, 30);
}

function sayProblem(error) {
  if (error instanceof ApiError) say(describeProblem(error.problem), "error");
  else {
    console.error(error);
    say("Something went wrong in this page; reload it to start again.", "error");
  }
}

// ---------------------------------------------------------------- the live stream

/** Server-sent events from a fetch() body: yields {event, data, id} per the HTML standard's parser. */
async function* sseEvents(body, onBytes) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  const breaks = /\r\n|\r|\n/g;
  let buffer = "";
  let event = "";
  let data = [];
  let lastId = null;
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      onBytes();
      buffer += value;
      let start = 0;
      breaks.lastIndex = 0;
      for (let match = breaks.exec(buffer); match; match = breaks.exec(buffer)) {
        // A lone "\r" at the end may be the first half of "\r\n": wait for more.
        if (match[0] === "\r" && match.index === buffer.length - 1) break;
        const line = buffer.slice(start, match.index);
        start = match.index + match[0].length;
        if (line === "") {
          if (data.length) yield { event: event || "message", data: data.join("\n"), id: lastId };
          event = "";
          data = [];
          continue;
        }
        if (line.startsWith(":")) continue; // a comment: the heartbeat
        const colon = line.indexOf(":");
        const field = colon === -1 ? line : line.slice(0, colon);
        let value = colon === -1 ? "" : line.slice(colon + 1);
        if (value.startsWith(" ")) value = value.slice(1);
        if (field === "event") event = value;
        else if (field === "data") data.push(value);
        else if (field === "id" && !value.includes("\0")) lastId = value;
        else if (field === "retry" && /^\d+$/.test(value)) yield { event: "__retry", data: value, id: lastId };
      }
      buffer = buffer.slice(start);
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

let streamController = null;

function setLive(mode, words) {
  state.live = mode === "live";
  const box = $("live");
  box.dataset.state = mode;
  box.textContent = words;
}

/** (Re)open the stream for the chosen room and day; the previous one is closed. */
function openStream() {
  if (streamController) streamController.abort();
  const controller = new AbortController();
  streamController = controller;
  state.slots.clear();
  state.loaded = false;
  renderGrid();
  if (!state.roomId || !state.day) return;
  const { from, to } = dayRange(state.day);
  const query = new URLSearchParams({ room_id: state.roomId, from: from.toISOString(), to: to.toISOString() });
  runStream(`/slots/stream?${query}`, state.token, controller.signal);
}

async function runStream(url, token, signal) {
  let lastEventId = null;
  let retryMs = RETRY_MIN_MS;
  let failures = 0;
  while (!signal.aborted) {
    setLive("connecting", failures ? "Reconnecting…" : "Connecting…");
    // One connection: aborted with the whole stream, or on its own when the heartbeat stops.
    const connection = new AbortController();
    const stop = () => connection.abort();
    signal.addEventListener("abort", stop);
    let watchdog = setTimeout(stop, HEARTBEAT_TIMEOUT_MS);
    const onBytes = () => {
      clearTimeout(watchdog);
      watchdog = setTimeout(stop, HEARTBEAT_TIMEOUT_MS);
    };
    try {
      const headers = { Accept: "text/event-stream" };
      if (token) headers.Authorization = `Bearer ${token}`;
      if (lastEventId !== null) headers["Last-Event-ID"] = lastEventId;
      const response = await fetch(url, { headers, signal: connection.signal, cache: "no-store" });
      const type = response.headers.get("content-type") || "";
      if (!response.ok || !type.startsWith("text/event-stream")) {
        const problem = response.ok ? { detail: "not an event stream" } : await readProblem(response);
        if (response.status >= 400 && response.status < 500 && response.status !== 408 && response.status !== 429) {
          // Asking again will not help: show what the REST API says, once, and stay there.
          setLive("off", "Live updates unavailable");
          // A server without the stream answers 404 or 422 (it reads "stream" as a slot id):
          // that is not the user's problem. A missing room or a refused token is.
          if (STREAM_PROBLEMS_TO_SHOW.has(problem.code)) say(describeProblem(problem), "error");
          await loadSlotsOnce(signal);
          return;
        }
        throw new Error(`stream answered ${response.status}`);
      }
      // Connected: a resumed stream (Last-Event-ID) sends no snapshot, only what changed.
      setLive("live", "Live");
      failures = 0;
      for await (const message of sseEvents(response.body, onBytes)) {
        if (signal.aborted) return;
        if (message.id !== null) lastEventId = message.id;
        if (message.event === "__retry") {
          retryMs = Math.min(Math.max(Number(message.data), RETRY_MIN_MS), RETRY_MAX_MS);
          continue;
        }
        applyEvent(message);
      }
    } catch (error) {
      if (signal.aborted) return;
      if (!(error instanceof TypeError || error.name === "AbortError")) console.warn("stream:", error);
    } finally {
      clearTimeout(watchdog);
      signal.removeEventListener("abort", stop);
    }
    if (signal.aborted) return;
    failures += 1;
    setLive("connecting", "Reconnecting…");
    const wait = Math.min(retryMs * 2 ** Math.min(failures - 1, 4), RETRY_MAX_MS);
    await new Promise((resolve) => setTimeout(resolve, wait * (0.8 + Math.random() * 0.4)));
  }
}

function inView(slot) {
  if (slot.room_id !== state.roomId || !state.day) return false;
  const { from, to } = dayRange(state.day);
  const start = Date.parse(slot.start_time);
  return start >= from.getTime() && start < to.getTime();
}

function applyEvent({ event, data }) {
  let body;
  try {
    body = JSON.parse(data);
  } catch {
    return;
  }
  if (event === "snapshot") {
    state.slots.clear();
    for (const slot of body.items) if (inView(slot)) state.slots.set(slot.id, slot);
    state.loaded = true;
    renderGrid();
    checkMine(body.items);
  } else if (event === "slot") {
    if (inView(body)) state.slots.set(body.id, body);
    else state.slots.delete(body.id);
    renderGrid();
    checkMine([body]);
  } else if (event === "slot_deleted") {
    state.slots.delete(body.id);
    renderGrid();
  }
}

/** Re-read the caller's holds and bookings when the stream shows one the lists do not match. */
function checkMine(slots) {
  if (!state.user) return;
  const mine = new Map([...state.holds, ...state.bookings].map((h) => [h.slot_id, h]));
  const stale = slots.some((slot) => {
    const known = mine.get(slot.id);
    if (known) return slot.hold_id !== known.hold_id;
    return slot.hold_id !== null && slot.hold_id !== undefined;
  });
  if (stale) refreshMine();
}

/** Without the stream: the grid, read once over GET /slots (every page). */
async function loadSlotsOnce(signal) {
  const { from, to } = dayRange(state.day);
  const items = [];
  let cursor = null;
  try {
    do {
      const query = new URLSearchParams({ room_id: state.roomId, from: from.toISOString(), to: to.toISOString(), limit: "500" });
      if (cursor) query.set("cursor", cursor);
      const page = await api("GET", `/slots?${query}`);
      items.push(...page.items);
      cursor = page.next_cursor;
    } while (cursor);
  } catch (error) {
    if (!signal.aborted) sayProblem(error);
    return;
  }
  if (signal.aborted) return;
  state.slots.clear();
  for (const slot of items) state.slots.set(slot.id, slot);
  state.loaded = true;
  renderGrid();
}

/** After one of the page's own actions: with the stream live it brings the change; else re-read the slot. */
async function refreshSlot(slotId) {
  if (state.live) return;
  try {
    const slot = await api("GET", `/slots/${slotId}`);
    if (inView(slot)) state.slots.set(slot.id, slot);
    state.slotInfo.set(slot.id, slot);
    renderGrid();
  } catch {
    // the grid keeps what it has; the next action or reload corrects it
  }
}

// ---------------------------------------------------------------- the grid

/** The slot as it stands now: a hold whose time has passed no longer counts, event or not. */
function effective(slot, now) {
  if (slot.status === "HELD_BY_ME" || slot.status === "HELD_BY_OTHER") {
    const end = slot.held_until || (slot.status === "HELD_BY_ME" ? slot.expires_at : null);
    if (end && Date.parse(end) <= now) {
      return { ...slot, status: "AVAILABLE", hold_id: null, expires_at: null, held_until: null };
    }
  }
  return slot;
}

function statusWords(slot, now) {
  switch (slot.status) {
    case "AVAILABLE":
      return Date.parse(slot.start_time) <= now ? "Started" : "Available";
    case "HELD_BY_ME":
      return `Held by you · ${countdown(slot.held_until || slot.expires_at, now)} left`;
    case "HELD_BY_OTHER":
      return slot.held_until ? `Held until ${when(slot.held_until)}` : "Held by someone else";
    case "BOOKED":
      return slot.hold_id ? "Booked by you" : "Booked";
    default:
      return slot.status;
  }
}

const slotButtons = new Map(); // slot id -> <li>, kept across renders so keyboard focus stays put

function renderGrid(now = Date.now()) {
  const grid = $("grid");
  const slots = [...state.slots.values()]
    .map((slot) => effective(slot, now))
    .sort((a, b) => Date.parse(a.start_time) - Date.parse(b.start_time) || a.id.localeCompare(b.id));
  for (const [id, item] of slotButtons) {
    if (!state.slots.has(id)) {
      item.remove();
      slotButtons.delete(id);
    }
  }
  slots.forEach((slot, index) => {
    let item = slotButtons.get(slot.id);
    if (!item) {
      item = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      button.className = "slot";
      button.dataset.slotId = slot.id;
      button.innerHTML = '<span class="slot-time"></span><span class="slot-status"></span>';
      button.addEventListener("click", () => onSlotClick(slot.id));
      item.append(button);
      slotButtons.set(slot.id, item);
    }
    const button = item.firstElementChild;
    const started = slot.status === "AVAILABLE" && Date.parse(slot.start_time) <= now;
    const status = started ? "STARTED" : slot.status;
    if (button.dataset.status !== status) {
      button.dataset.status = status;
      button.className = `slot ${status}${slot.status === "BOOKED" && slot.hold_id ? " mine" : ""}`;
    }
    button.disabled = started;
    setText(button.querySelector(".slot-time"), span(slot));
    setText(button.querySelector(".slot-status"), statusWords(slot, now));
    if (grid.children[index] !== item) grid.insertBefore(item, grid.children[index] || null);
  });
  $("grid-empty").hidden = !(state.loaded && slots.length === 0);
}

function setText(element, text) {
  if (element.textContent !== text) element.textContent = text;
}

async function onSlotClick(slotId) {
  const stored = state.slots.get(slotId);
  if (!stored) return;
  const slot = effective(stored, Date.now());
  if (slot.status === "HELD_BY_ME") {
    const card = document.querySelector(`#holds [data-slot-id="${slotId}"] button`);
    say("You hold this slot: confirm, extend or release it under “Your holds”.");
    if (card) card.focus();
    return;
  }
  if (!state.user) {
    say("Sign up or paste a token first, then choose a slot to hold it.", "error");
    $("signup-name").focus();
    return;
  }
  try {
    const hold = await api("POST", "/holds", { slot_id: slotId });
    state.slots.set(slotId, {
      ...stored,
      status: "HELD_BY_ME",
      hold_id: hold.hold_id,
      expires_at: hold.expires_at,
      held_until: hold.expires_at,
    });
    renderGrid();
    say(`Held ${dayFormat.format(new Date(stored.start_time))}, ${span(stored)} until ${when(hold.expires_at)}. Confirm it to book.`, "ok");
    await refreshMine();
  } catch (error) {
    sayProblem(error);
    const p = error instanceof ApiError ? error.problem : null;
    if (p && p.code === "SLOT_UNAVAILABLE" && p.slot_status) {
      // The answer says what the slot is now: show it even before the stream does.
      state.slots.set(slotId, {
        ...stored,
        status: p.slot_status,
        hold_id: p.hold_id ?? null,
        held_until: p.held_until ?? null,
        expires_at: p.slot_status === "HELD_BY_ME" ? (p.held_until ?? null) : null,
      });
      renderGrid();
    } else {
      await refreshSlot(slotId);
    }
  }
}

// ---------------------------------------------------------------- the caller's holds and bookings

let mineGeneration = 0;

async function refreshMine() {
  const generation = ++mineGeneration;
  if (!state.user) {
    state.holds = [];
    state.bookings = [];
    renderMine();
    return;
  }
  try {
    const [holds, bookings] = await Promise.all([
      api("GET", "/holds?status=HOLD&limit=100"),
      api("GET", "/holds?status=CONFIRMED&limit=100"),
    ]);
    const missing = [...holds.items, ...bookings.items].map((h) => h.slot_id).filter((id) => !state.slotInfo.has(id));
    const infos = await Promise.all([...new Set(missing)].map((id) => api("GET", `/slots/${id}`).catch(() => null)));
    if (generation !== mineGeneration) return;
    for (const info of infos) if (info) state.slotInfo.set(info.id, info);
    const kept = new Set(holds.items.map((h) => h.hold_id));
    announceLapsed(state.holds.filter((h) => !kept.has(h.hold_id)));
    state.holds = holds.items;
    state.bookings = bookings.items;
    renderMine();
  } catch (error) {
    if (generation === mineGeneration) sayProblem(error);
  }
}

function roomName(roomId) {
  const room = state.rooms.find((r) => r.id === roomId);
  return room ? room.name : "Room";
}

function describeSlot(slotId) {
  const slot = state.slotInfo.get(slotId);
  if (!slot) return "A slot";
  return `${roomName(slot.room_id)} · ${dayFormat.format(new Date(slot.start_time))} · ${span(slot)}`;
}

function card(hold, actions, extra) {
  const item = document.createElement("li");
  item.className = "card";
  item.dataset.holdId = hold.hold_id;
  item.dataset.slotId = hold.slot_id;
  const title = document.createElement("p");
  title.className = "card-title";
  title.textContent = describeSlot(hold.slot_id);
  item.append(title);
  if (extra) item.append(extra);
  const row = document.createElement("div");
  row.className = "actions";
  for (const [label, handler, options = {}] of actions) {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = label;
    button.dataset.action = options.action || label.toLowerCase();
    if (options.primary) button.classList.add("primary");
    if (options.disabled) button.disabled = true;
    button.setAttribute("aria-label", `${label}: ${title.textContent}`);
    button.addEventListener("click", () => handler(hold, button));
    row.append(button);
  }
  item.append(row);
  return item;
}

function renderMine(now = Date.now()) {
  const hadFocus = document.activeElement && document.activeElement.closest("#holds, #bookings");
  const live = state.holds.filter((h) => Date.parse(h.expires_at) > now);
  $("holds").replaceChildren(
    ...live.map((hold) => {
      const timer = document.createElement("p");
      timer.className = "countdown";
      timer.setAttribute("role", "timer");
      timer.dataset.expiresAt = hold.expires_at;
      timer.textContent = `${countdown(hold.expires_at, now)} left · held until ${when(hold.expires_at)}`;
      return card(
        hold,
        [
          ["Confirm", confirmHold, { primary: true }],
          [`Extend (${hold.extensions_left} left)`, extendHold, { action: "extend", disabled: hold.extensions_left < 1 }],
          ["Release", releaseHold],
        ],
        timer,
      );
    }),
  );
  $("bookings").replaceChildren(
    ...state.bookings.map((booking) => {
      const info = state.slotInfo.get(booking.slot_id);
      const started = info && Date.parse(info.start_time) <= now;
      const note = document.createElement("p");
      note.className = "booked";
      note.textContent = started ? "Booked · started" : "Booked";
      return card(booking, [["Cancel", cancelBooking, { disabled: started }]], note);
    }),
  );
  $("holds-empty").hidden = live.length > 0;
  $("bookings-empty").hidden = state.bookings.length > 0;
  $("holds").setAttribute("aria-label", "Your holds");
  // An action that removed the focused button: keep keyboard users in the same place.
  if (hadFocus && !document.activeElement?.closest("#holds, #bookings")) {
    const next = document.querySelector("#holds button:not(:disabled), #bookings button:not(:disabled)");
    (next || $("holds-heading")).focus();
  }
}

async function act(hold, button, verb, done) {
  button.disabled = true;
  if (verb !== "extend") endedHere.add(hold.hold_id);
  try {
    const result = await api("POST", `/holds/${hold.hold_id}/${verb}`);
    done(result);
  } catch (error) {
    sayProblem(error);
    button.disabled = false;
  }
  await refreshMine();
  await refreshSlot(hold.slot_id);
}

function patchSlot(slotId, patch) {
  const slot = state.slots.get(slotId);
  if (slot) state.slots.set(slotId, { ...slot, ...patch });
  renderGrid();
}

function confirmHold(hold, button) {
  return act(hold, button, "confirm", () => {
    patchSlot(hold.slot_id, { status: "BOOKED", expires_at: null, held_until: null });
    say(`Booked: ${describeSlot(hold.slot_id)}.`, "ok");
  });
}

function extendHold(hold, button) {
  return act(hold, button, "extend", (result) => {
    patchSlot(hold.slot_id, { expires_at: result.expires_at, held_until: result.expires_at });
    say(`Extended: held until ${when(result.expires_at)}.`, "ok");
  });
}

function releaseHold(hold, button) {
  return act(hold, button, "release", () => {
    patchSlot(hold.slot_id, { status: "AVAILABLE", hold_id: null, expires_at: null, held_until: null });
    say(`Released: ${describeSlot(hold.slot_id)}.`, "ok");
  });
}

function cancelBooking(booking, button) {
  return act(booking, button, "cancel", () => {
    patchSlot(booking.slot_id, { status: "AVAILABLE", hold_id: null, expires_at: null, held_until: null });
    say(`Cancelled: ${describeSlot(booking.slot_id)}.`, "ok");
  });
}

// ---------------------------------------------------------------- one tick a second: countdowns

const endedHere = new Set(); // holds this page released or confirmed: their end is no news
const announced = new Set(); // holds whose lapse was already announced

/** Say so when holds ended by running out of time (seen by the clock or by the server). */
function announceLapsed(holds, now = Date.now()) {
  // A hold that left the list without this page acting, at about its expiry, has lapsed;
  // the two clocks may differ by a little.
  const lapsed = holds.filter(
    (h) => !endedHere.has(h.hold_id) && !announced.has(h.hold_id) && Date.parse(h.expires_at) <= now + 2000,
  );
  for (const hold of lapsed) announced.add(hold.hold_id);
  if (lapsed.length === 1) say(`Your hold has expired: ${describeSlot(lapsed[0].slot_id)}. The slot is free again.`, "error");
  else if (lapsed.length > 1) say(`${lapsed.length} of your holds have expired. Their slots are free again.`, "error");
}

function tick() {
  const now = Date.now();
  renderGrid(now);
  const lapsed = state.holds.filter((h) => Date.parse(h.expires_at) <= now);
  for (const timer of document.querySelectorAll("#holds .countdown")) {
    const expiresAt = timer.dataset.expiresAt;
    if (Date.parse(expiresAt) > now) setText(timer, `${countdown(expiresAt, now)} left · held until ${when(expiresAt)}`);
  }
  if (lapsed.some((h) => !announced.has(h.hold_id))) {
    announceLapsed(lapsed, now);
    renderMine(now);
    refreshMine();
  }
}

// ---------------------------------------------------------------- who you are

function setToken(token) {
  state.token = token;
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  else sessionStorage.removeItem(TOKEN_KEY);
}

function showUser() {
  const signedIn = Boolean(state.user);
  $("signed-in").hidden = !signedIn;
  $("signed-out").hidden = signedIn;
  if (signedIn) {
    $("who-name").textContent = state.user.name;
    $("who-handle").textContent = `@${state.user.handle}`;
  } else {
    $("new-token").hidden = true;
    $("new-token-value").textContent = "";
  }
}

async function signIn(token, { announce = true } = {}) {
  const previous = state.token;
  setToken(token);
  try {
    state.user = await api("GET", "/users/me");
  } catch (error) {
    setToken(previous && previous !== token ? previous : null);
    if (announce || !(error instanceof ApiError && error.status === 401)) sayProblem(error);
    return false;
  }
  showUser();
  openStream(); // statuses are per caller: HELD_BY_ME needs the token
  await refreshMine();
  return true;
}

async function onSignup(event) {
  event.preventDefault();
  const name = $("signup-name").value.trim();
  const handle = $("signup-handle").value.trim();
  if (!name || !handle) {
    say("Enter a name and a handle to sign up.", "error");
    (name ? $("signup-handle") : $("signup-name")).focus();
    return;
  }
  try {
    const user = await api("POST", "/users", { name, handle });
    event.target.reset();
    if (await signIn(user.token)) {
      $("new-token-value").textContent = user.token;
      $("new-token").hidden = false;
      say(`Welcome, ${user.name}. You are signed in.`, "ok");
      $("sign-out").focus();
    }
  } catch (error) {
    sayProblem(error);
  }
}

async function onTokenSubmit(event) {
  event.preventDefault();
  const token = $("token-input").value.trim();
  if (!token) {
    say("Paste a token first.", "error");
    $("token-input").focus();
    return;
  }
  if (await signIn(token)) {
    event.target.reset();
    say(`Signed in as ${state.user.name}.`, "ok");
    $("sign-out").focus();
  } else {
    $("token-input").focus();
  }
}

function signOut() {
  setToken(null);
  state.user = null;
  state.holds = [];
  state.bookings = [];
  showUser();
  renderMine();
  openStream();
  say("Signed out.");
  $("signup-name").focus();
}

// ---------------------------------------------------------------- room and day

async function loadRooms() {
  try {
    state.rooms = await api("GET", "/rooms");
  } catch (error) {
    sayProblem(error);
    return;
  }
  const select = $("room");
  select.replaceChildren(
    ...state.rooms.map((room) => {
      const option = document.createElement("option");
      option.value = room.id;
      option.textContent = `${room.name} (${room.capacity})`;
      return option;
    }),
  );
  const remembered = sessionStorage.getItem(ROOM_KEY);
  state.roomId = state.rooms.some((r) => r.id === remembered) ? remembered : (state.rooms[0]?.id ?? null);
  if (state.roomId) select.value = state.roomId;
  else say("There are no rooms yet.");
}

function chooseDay(day) {
  state.day = day;
  $("day").value = day;
  openStream();
}

function stepDay(delta) {
  const { from } = dayRange(state.day);
  chooseDay(localDay(new Date(from.getFullYear(), from.getMonth(), from.getDate() + delta)));
}

async function main() {
  $("zone").textContent = `Times are shown in your time zone (${zoneName}).`;
  $("signup-form").addEventListener("submit", onSignup);
  $("token-form").addEventListener("submit", onTokenSubmit);
  $("sign-out").addEventListener("click", signOut);
  $("room").addEventListener("change", (event) => {
    state.roomId = event.target.value;
    sessionStorage.setItem(ROOM_KEY, state.roomId);
    openStream();
  });
  $("day").addEventListener("change", (event) => {
    if (event.target.value) chooseDay(event.target.value);
  });
  $("prev-day").addEventListener("click", () => stepDay(-1));
  $("next-day").addEventListener("click", () => stepDay(1));
  showUser();
  renderMine();
  await loadRooms();
  state.day = localDay(new Date());
  $("day").value = state.day;
  if (state.token && (await signIn(state.token, { announce: false }))) {
    // signIn opened the stream
  } else {
    openStream();
  }
  setInterval(tick, 1000);
  document.body.dataset.ready = "true";
}

main();
