/* trajlake browser tracker: what the user did with the agent's actions, as frontend/1 contract events.
 * Served by the collector at /tracker.js. Batches events, retries with backoff, and hands what is left to
 * navigator.sendBeacon when the page is hidden. Bodies are sent as text/plain with the write key in the query,
 * so no request needs a CORS preflight (and sendBeacon, which cannot set headers, works the same way). */
(function (global) {
  "use strict";
  var SDK = "trajlake-js", VERSION = "1.0.0";

  function uuid() {
    var c = global.crypto;
    if (c && c.randomUUID) return c.randomUUID();
    var b = new Uint8Array(16);
    c.getRandomValues(b);
    b[6] = (b[6] & 0x0f) | 0x40; b[8] = (b[8] & 0x3f) | 0x80;
    var h = Array.prototype.map.call(b, function (x) { return (x + 256).toString(16).slice(1); }).join("");
    return h.slice(0, 8) + "-" + h.slice(8, 12) + "-" + h.slice(12, 16) + "-" + h.slice(16, 20) + "-" + h.slice(20);
  }

  // ids that survive reloads of the same tab (sessionStorage), or live in memory when storage is blocked
  function stored(name, make) {
    try {
      var v = global.sessionStorage.getItem(name);
      if (!v) { v = make(); global.sessionStorage.setItem(name, v); }
      return v;
    } catch (e) { return make(); }
  }
  function store(name, value) { try { global.sessionStorage.setItem(name, value); } catch (e) { /* memory only */ } }

  function Tracker(opts) {
    if (!opts || !opts.endpoint || !opts.writeKey) throw new Error("trajlake: endpoint and writeKey are required");
    this.url = opts.endpoint.replace(/\/$/, "") + "/v1/events?key=" + encodeURIComponent(opts.writeKey);
    // the contract's ids are strings: a numeric user id (`userId: me.id`) made every event a schema violation
    this.ctx = {
      user_id: opts.userId == null ? opts.userId : String(opts.userId), agent_version: opts.agentVersion,
      prompt_variant: opts.promptVariant,
      task_type: opts.taskType || null
    };
    this.app = opts.app || null;
    this.sessionId = opts.sessionId || stored("trajlake.session_id", function () { return "s-" + uuid(); });
    this.taskId = opts.taskId || stored("trajlake.task_id", function () { return "t-" + uuid(); });
    if (opts.taskId) store("trajlake.task_id", opts.taskId);
    this.batchSize = opts.batchSize || 20;
    this.flushMs = opts.flushMs === undefined ? 1000 : opts.flushMs;
    this.maxRetries = opts.maxRetries === undefined ? 5 : opts.maxRetries;
    this.maxQueue = opts.maxQueue || 1000;
    this.onResult = opts.onResult || function () {};
    this.queue = [];
    this.inflight = false;
    this.attempts = 0;
    this.timer = null;
    this.dropped = 0;
    var self = this;
    // pagehide covers navigation and bfcache; visibilitychange covers tab switches and mobile app switches
    global.addEventListener("pagehide", function () { self.beacon(); });
    global.document.addEventListener("visibilitychange", function () {
      if (global.document.visibilityState === "hidden") self.beacon();
    });
  }

  Tracker.prototype.setContext = function (ctx) {
    if (ctx.taskId) { this.taskId = ctx.taskId; store("trajlake.task_id", ctx.taskId); }
    if (ctx.userId != null) this.ctx.user_id = String(ctx.userId);
    if (ctx.agentVersion) this.ctx.agent_version = ctx.agentVersion;
    if (ctx.promptVariant) this.ctx.prompt_variant = ctx.promptVariant;
    if (ctx.taskType !== undefined) this.ctx.task_type = ctx.taskType;
  };

  /* A new task in the same session (e.g. the user starts another request). */
  Tracker.prototype.newTask = function (taskId) {
    this.taskId = taskId || "t-" + uuid();
    store("trajlake.task_id", this.taskId);
    return this.taskId;
  };

  Tracker.prototype.track = function (eventType, fields) {
    fields = fields || {};
    var client = { sdk: SDK, version: VERSION };
    if (this.app) client.app = this.app;
    var e = {
      schema: "frontend/1", event_id: uuid(), event_type: eventType, ts: new Date().toISOString(),
      session_id: this.sessionId, task_id: this.taskId, user_id: this.ctx.user_id,
      agent_version: this.ctx.agent_version, prompt_variant: this.ctx.prompt_variant, task_type: this.ctx.task_type,
      client: client, body: fields.body || {}
    };
    if (fields.actionId) e.action_id = fields.actionId;
    if (fields.intentId) e.intent_id = fields.intentId;
    if (this.queue.length >= this.maxQueue) { this.queue.shift(); this.dropped++; }
    this.queue.push(e);
    if (this.queue.length >= this.batchSize) this.flush();
    else this.schedule(this.flushMs);
    return e.event_id;
  };

  Tracker.prototype.schedule = function (ms) {
    var self = this;
    if (this.timer !== null) return;
    this.timer = global.setTimeout(function () { self.timer = null; self.flush(); }, ms);
  };

  // Browsers refuse a keepalive fetch or a beacon whose body (with the others in flight) passes 64 KiB: a batch
  // holding a long edit failed with a network error at every retry and was dropped. Batches stay under this, and
  // an event larger on its own goes alone, without keepalive (which only matters while the page unloads).
  var KEEPALIVE_BYTES = 60000;
  var encoder = global.TextEncoder ? new global.TextEncoder() : null;
  function bytes(text) { return encoder ? encoder.encode(text).length : text.length * 3; }

  /* The next batch off the queue: up to batchSize events within KEEPALIVE_BYTES (at least one event). */
  Tracker.prototype.take = function () {
    var batch = [], size = 2;
    while (this.queue.length && batch.length < this.batchSize) {
      var n = bytes(JSON.stringify(this.queue[0])) + 1;
      if (batch.length && size + n > KEEPALIVE_BYTES) break;
      batch.push(this.queue.shift());
      size += n;
    }
    return batch;
  };

  /* Send one batch with fetch; a network error, 429 or 5xx puts it back and retries with backoff. */
  Tracker.prototype.flush = function () {
    if (this.inflight || this.queue.length === 0) return Promise.resolve();
    var batch = this.take(), self = this, body = JSON.stringify(batch);
    this.inflight = true;
    return global.fetch(this.url, {
      method: "POST", body: body, keepalive: bytes(body) <= KEEPALIVE_BYTES, credentials: "omit",
      headers: { "Content-Type": "text/plain" }
    }).then(function (r) {
      if (r.status === 429 || r.status >= 500) throw new Error("retryable " + r.status);
      self.attempts = 0;
      return r.json().then(function (answer) { self.onResult(answer, r.status, batch); }, function () {});
    }).catch(function (err) {
      if (self.attempts++ < self.maxRetries) {
        self.queue = batch.concat(self.queue);  // event ids make a resend harmless
      } else {
        self.attempts = 0; self.dropped += batch.length;
        self.onResult({ error: String(err) }, 0, batch);
      }
    }).then(function () {
      self.inflight = false;
      if (self.queue.length) self.schedule(self.attempts ? Math.min(30000, 500 * Math.pow(2, self.attempts)) : 0);
    });
  };

  /* The page is going away: whatever is queued goes with sendBeacon (the browser delivers it after unload). */
  Tracker.prototype.beacon = function () {
    while (this.queue.length) {
      var batch = this.take();
      var ok = global.navigator.sendBeacon &&
        global.navigator.sendBeacon(this.url, new Blob([JSON.stringify(batch)], { type: "text/plain" }));
      if (!ok) { this.queue = batch.concat(this.queue); this.flush(); return; }
    }
  };

  // the frontend event types of the contract, one helper each
  var P = Tracker.prototype;
  P.shown = function (actionId, surface) { return this.track("action_shown", { actionId: actionId, body: surface ? { surface: surface } : {} }); };
  P.accepted = function (actionId) { return this.track("action_accepted", { actionId: actionId }); };
  P.rejected = function (actionId, reason) { return this.track("action_rejected", { actionId: actionId, body: reason ? { reason: reason } : {} }); };
  P.edited = function (actionId, finalValue) { return this.track("action_edited", { actionId: actionId, body: { final_value: String(finalValue) } }); };
  P.undone = function (actionId) { return this.track("action_undone", { actionId: actionId }); };
  P.retried = function (actionId, intentId) { return this.track("action_retried", { actionId: actionId, intentId: intentId }); };
  P.abandoned = function (reason) { return this.track("task_abandoned", { body: reason ? { reason: reason } : {} }); };
  P.escalated = function (channel, reason) {
    var b = {}; if (channel) b.channel = channel; if (reason) b.reason = reason;
    return this.track("escalated", { body: b });
  };
  P.delegated = function (repeatOfTaskId) { return this.track("delegated", { body: repeatOfTaskId ? { repeat_of_task_id: repeatOfTaskId } : {} }); };
  P.optedOut = function (scope, reason) {
    var b = {}; if (scope) b.scope = scope; if (reason) b.reason = reason;
    return this.track("opted_out", { body: b });
  };
  P.completed = function (kpi, humanApproved) {
    var b = {}; if (typeof kpi === "number") b.kpi = kpi; if (typeof humanApproved === "boolean") b.human_approved = humanApproved;
    return this.track("task_completed", { body: b });
  };
  P.reopened = function (reason) { return this.track("task_reopened", { body: reason ? { reason: reason } : {} }); };
  P.message = function (text) { return this.track("user_message", { body: { text: String(text) } }); };
  P.feedback = function (rating, comment) {
    var b = {}; if (rating) b.rating = rating; if (comment) b.comment = comment;
    return this.track("feedback", { body: b });
  };

  global.trajlake = { Tracker: Tracker, init: function (opts) { return new Tracker(opts); }, version: VERSION };
})(window);
