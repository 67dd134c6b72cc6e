// gRPC-Web with a real browser client library: connect-web's createGrpcWebTransport, from Node,
// over HTTP/1.1, against a running `storywire serve --demo --tokens FILE` that this file does not
// start (scripts/grpc-web-test does). The messages and the service come from proto/, generated
// into gen/ by buf and protoc-gen-es before the run.
//
// STORYWIRE_GRPC_WEB_URL: the server, http://HOST:PORT. STORYWIRE_TOKEN: a token with the
// publish and subscribe roles. Every call is bounded, so the run stops by itself.

import assert from "node:assert/strict";
import { test } from "node:test";

import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";

import { StoryService } from "./gen/storywire/v1/service_pb.js";

const baseUrl = required("STORYWIRE_GRPC_WEB_URL");
const token = required("STORYWIRE_TOKEN");
/** The story `serve --demo` publishes (src/demo.rs). */
const DEMO_STORY = "nk-diplomat-italy";
/** The longest a call may take: it is then cancelled, and its test fails saying so. */
const PATIENCE_MS = 15_000;
/** The test runner's own bound on a test, past its calls': a test that hangs anyway fails too. */
const TEST = { timeout: 20_000 };

function required(name) {
  const value = process.env[name];
  if (!value) {
    throw new Error(`${name} is not set: run this through scripts/grpc-web-test`);
  }
  return value;
}

/** A StoryService client over gRPC-Web, sending `authorization: Bearer <token>` unless `token` is null. */
function storyClient(bearer = token) {
  const authorize = (next) => async (request) => {
    if (bearer !== null) {
      request.header.set("authorization", `Bearer ${bearer}`);
    }
    return next(request);
  };
  // Binary protobuf (application/grpc-web+proto), what tonic-web speaks.
  const transport = createGrpcWebTransport({ baseUrl, useBinaryFormat: true, interceptors: [authorize] });
  return createClient(StoryService, transport);
}

/** Call options that give up after PATIENCE_MS. */
function bounded() {
  return { signal: AbortSignal.timeout(PATIENCE_MS) };
}

test("GetStory returns the demo story", TEST, async () => {
  const { story } = await storyClient().getStory({ storyId: DEMO_STORY }, bounded());
  assert.equal(story.id, DEMO_STORY);
  assert.match(story.headline, /ambassador to Italy/);
  assert.ok(story.version >= 1n, `version ${story.version}`);
  assert.ok(story.facts.length > 0, "the seed reports facts");
});

test("a call without a token is refused with UNAUTHENTICATED", TEST, async () => {
  await assert.rejects(storyClient(null).getStory({ storyId: DEMO_STORY }, bounded()), (error) => {
    assert.ok(error instanceof ConnectError, String(error));
    assert.equal(error.code, Code.Unauthenticated);
    assert.match(error.rawMessage, /authorization/);
    return true;
  });
});

test("Subscribe receives an update published while it is open", TEST, async () => {
  const client = storyClient();
  const eventId = `grpc-web-test-${process.pid}-${Date.now()}`;
  const stream = client.subscribe({ storyIds: [DEMO_STORY], fromSequence: 1n }, bounded());
  let started = null;
  let caughtUp = null;
  let published = null;
  let received = null;
  for await (const response of stream) {
    const { case: kind, value } = response.item;
    if (kind === "started") {
      started = value;
    } else if (kind === "caughtUp") {
      // Live from here: publish over gRPC-Web too, and wait for it on the open stream.
      caughtUp = value;
      published = await client.publish(
        {
          storyId: DEMO_STORY,
          eventId,
          headline: "gRPC-Web test: a note published during the test",
          change: { kind: { case: "contextAdded", value: { text: "Published by tests/grpc-web." } } },
        },
        bounded(),
      );
      assert.equal(published.duplicate, false);
    } else if (kind === "event" && value.eventId === eventId) {
      received = value;
      break; // ends the call
    }
  }
  assert.ok(started !== null, "the stream starts with `started`");
  assert.ok(caughtUp !== null, "the stream catches up");
  assert.equal(caughtUp.logId, started.logId);
  assert.ok(received !== null, "the published update arrives on the open stream");
  assert.equal(received.sequence, published.sequence);
  assert.equal(received.storyId, DEMO_STORY);
  assert.ok(received.sequence > caughtUp.headSequence, "a live event, past the head at catch-up");
});
