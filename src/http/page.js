// The live story page: renders the story from /v1/stories/{id} and keeps it live with an
// EventSource on /v1/events. The browser resumes a dropped stream by itself (Last-Event-ID);
// every update is shown once, newest first.
(() => {
  "use strict";
  const main = document.querySelector("main.story");
  if (!main) return;
  const id = main.dataset.storyId;
  const liveState = document.getElementById("live-state");
  const feed = document.getElementById("updates");
  const shown = new Set();
  let caughtUp = false;
  let ended = false;
  let refreshing = null;

  const words = (name, prefix) => (name || "").replace(prefix, "").toLowerCase().replace(/_/g, " ");
  const el = (tag, className, text) => {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  };
  const when = (stamp) => {
    if (!stamp) return "";
    const date = new Date(stamp);
    return date.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
  };
  const setState = (state, text) => {
    liveState.dataset.state = state;
    liveState.textContent = text;
  };
  const source = (s) => [s && s.name, s && s.role].filter(Boolean).join(", ");

  // A source's name, linked to where its words can be read when it has a URL (the server takes
  // only http and https URLs; checked again here, as the page never links anything else).
  function sourceName(s) {
    const name = source(s) || "An unnamed source";
    if (!s || !/^https?:\/\//.test(s.url || "")) return el("span", "source", name);
    const link = el("a", "source", name);
    link.href = s.url;
    link.rel = "nofollow noopener";
    return link;
  }

  function attribution(a) {
    const li = el("li", "attribution");
    const stance = words(a.stance, "STANCE_");
    li.append(sourceName(a.source));
    li.append(" ", el("span", `stance ${stance.replace(/ /g, "-")}`, stance));
    if (a.via && a.via.length) li.append(" ", el("span", "via", `via ${a.via.map(source).join(" via ")}`));
    if (a.hedge) li.append(" ", el("span", "hedge", `(${a.hedge})`));
    if (a.anonymous) {
      li.append(" ", el("span", "hedge", a.anonymityReason ? `(not named: ${a.anonymityReason})` : "(not named)"));
    }
    return li;
  }

  // One line of a fact's history: a correction, or a change of the desk's status.
  function revision(r) {
    const reason = r.reason ? ` (${r.reason})` : "";
    if (r.statement) {
      const note = el("p", "correction");
      note.append(el("strong", "", "Correction: "), `earlier read “${r.statement.from}”${reason}`);
      return note;
    }
    const from = words(r.status.from, "FACT_STATUS_");
    const to = words(r.status.to, "FACT_STATUS_");
    return el("p", "status-change", `Was ${from}, now ${to}${reason}`);
  }

  function renderStory(story) {
    main.lang = story.language || "";
    document.getElementById("headline").textContent = story.headline;
    document.title = story.headline;
    document.getElementById("summary").textContent = story.summary || "";
    const status = words(story.status, "STORY_STATUS_");
    const statusEl = document.getElementById("story-status");
    statusEl.textContent = status;
    statusEl.className = `status status-${status}`;
    const changes = story.statusHistory || [];
    const latest = changes[changes.length - 1];
    document.getElementById("status-reason").textContent = latest && latest.reason ? latest.reason : "";
    const tags = document.getElementById("tags");
    tags.replaceChildren(...(story.tags || []).map((t) => el("span", "tag", t)));
    const updated = document.getElementById("updated");
    updated.textContent = when(story.updatedAt);
    updated.dateTime = story.updatedAt || "";

    const facts = document.getElementById("facts");
    facts.replaceChildren(...(story.facts || []).map((fact) => {
      const li = el("li", "fact");
      li.dataset.factId = fact.id;
      const factStatus = words(fact.status, "FACT_STATUS_");
      li.append(el("span", `fact-status ${factStatus}`, factStatus));
      li.append(el("p", "statement", fact.statement));
      const sources = el("ul", "attributions");
      sources.append(...(fact.attributions || []).map(attribution));
      li.append(sources);
      li.append(...(fact.history || []).filter((r) => r.statement || r.status).map(revision));
      return li;
    }));
    const context = document.getElementById("context");
    context.replaceChildren(...(story.context || []).map((note) => {
      const li = el("li", "note", note.text);
      const sources = el("ul", "attributions");
      sources.append(...(note.attributions || []).map(attribution));
      li.append(sources);
      return li;
    }));
    ended = status === "concluded" || status === "withdrawn";
    if (caughtUp) showLive();
  }

  function showLive() {
    if (ended) setState("ended", document.getElementById("story-status").textContent);
    else setState("live", "Live");
  }

  function refresh() {
    if (refreshing) return refreshing;
    refreshing = fetch(`/v1/stories/${encodeURIComponent(id)}`, { credentials: "same-origin" })
      .then((reply) => reply.ok ? reply.json() : Promise.reject(reply.status))
      .then((reply) => renderStory(reply.story))
      .catch(() => {})
      .finally(() => { refreshing = null; });
    return refreshing;
  }

  function describe(event) {
    const change = event.change || {};
    if (change.storyOpened) return "Story opened";
    if (change.factReported) return `Reported: ${change.factReported.statement}`;
    if (change.factStatusChanged) return `Fact ${change.factStatusChanged.factId} now ${words(change.factStatusChanged.status, "FACT_STATUS_")}`;
    if (change.factCorrected) return `Correction: ${change.factCorrected.statement}`;
    if (change.storyRevised) return "Story revised";
    if (change.storyStatusChanged) return `Story ${words(change.storyStatusChanged.status, "STORY_STATUS_")}`;
    if (change.contextAdded) return `Context: ${change.contextAdded.text}`;
    return "";
  }

  function addUpdate(event, fresh) {
    const sequence = String(event.sequence);
    if (shown.has(sequence)) return;
    shown.add(sequence);
    const li = el("li", fresh ? "update fresh" : "update");
    li.dataset.sequence = sequence;
    const time = el("time", "", when(event.occurredAt));
    time.dateTime = event.occurredAt || "";
    li.append(time, el("p", "update-headline", event.headline), el("p", "update-change", describe(event)));
    if (event.publishedBy) li.append(el("p", "update-by", `by ${event.publishedBy}`));
    feed.prepend(li);
  }

  // From the story's newest retained updates (the server says where they start), then live.
  const from = main.dataset.fromSequence || "1";
  const stream = new EventSource(`/v1/events?story=${encodeURIComponent(id)}&from_sequence=${from}`);
  stream.onmessage = (message) => {
    addUpdate(JSON.parse(message.data), caughtUp);
    if (caughtUp) refresh();
  };
  stream.addEventListener("caught_up", () => {
    caughtUp = true;
    refresh().then(showLive);
  });
  stream.addEventListener("end", (message) => {
    // UNAVAILABLE: the server is stopping; the browser reconnects by itself and resumes.
    caughtUp = false;
    if (JSON.parse(message.data).code === "UNAVAILABLE") {
      setState("reconnecting", "Reconnecting…");
    } else {
      stream.close();
      setState("offline", "Stopped: reload the page");
    }
  });
  stream.onerror = () => {
    caughtUp = false;
    if (stream.readyState === EventSource.CLOSED) setState("offline", "Disconnected: reload the page");
    else setState("reconnecting", "Reconnecting…");
  };
  refresh();
})();
