#!/usr/bin/env python3
"""Follows the log and keeps its place in a state file, so a restart resumes where it stopped.

The state file holds the log_id and the last sequence handled:

    {"log_id": "3f1c...", "last_sequence": 42}

On start the subscriber reads it and asks for `from_sequence = last_sequence + 1` with that
`log_id`; the server then sends every later event, in order, with no gap and no duplicate. A
server with another log (its data directory was wiped, or this is another server) answers
FAILED_PRECONDITION rather than send sequences that mean something else: the subscriber says so and
exits 3, or, with --restart-on-new-log, forgets its place and reads the new log from the start.

Each event is printed, then its sequence saved (written to a temporary file, flushed and renamed
over the state file, so a crash leaves either the old state or the new one, never half of one).
A crash between the print and the save prints that one event again after the restart; nothing
is ever skipped. An idle or filtered stream's checkpoints are saved too, so a restart does not
rescan what the server already scanned.

    python subscribe.py --state desk.state [--story ID]... [--tag T]... [--server HOST:PORT]

Or let the server keep the place, with no state file at all: a named consumer.

    python subscribe.py --consumer desk [--story ID]... [--tag T]... [--server HOST:PORT]

creates consumer `desk` with that filter if it does not exist yet (reading from the oldest
retained event; the same filter again changes nothing), then reads it: the server delivers from
the consumer's acknowledged position, and each event is acknowledged (Ack) once printed. A crash
between the print and the Ack prints that one event again; nothing is ever skipped. A consumer
kept for another log (its server's data directory was cut and took a new log_id) exits 3: delete
it (`storywire consumers delete desk`) to start over.

Prints one line per event: sequence, story id and headline, separated by tabs. When the server is
unreachable or restarts, it retries from the saved state until stopped.
"""

import argparse
import json
import os
import re
import signal
import sys
import tempfile
import time

import grpc

from storywire_stubs import load

pb, pb_grpc = load()

# How long to wait before reconnecting after UNAVAILABLE: doubling from the first to the last, so
# a restarting server is picked up within a second and a long outage costs one attempt every 10 s.
FIRST_RETRY_DELAY = 0.2
LAST_RETRY_DELAY = 10.0

# The server answers a ListStories page up to 16 MiB; a Story item on the stream can be as large
# as --max-story-bytes (3 MiB by default). Room for both, above grpc's 4 MiB default.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024

# Exit status when the saved position belongs to another log and --restart-on-new-log is not set.
EXIT_OTHER_LOG = 3


def main():
    args = parse_args()
    # SIGTERM ends the process as Ctrl-C does: the state file is already up to date.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    metadata = [("authorization", f"Bearer {args.token}")] if args.token else []
    if args.consumer:
        follow_consumer(args, metadata)
        return
    state = read_state(args.state)
    delay = FIRST_RETRY_DELAY

    with grpc.insecure_channel(
        target(args.server), options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]
    ) as channel:
        stub = pb_grpc.StoryServiceStub(channel)
        while True:
            request = pb.SubscribeRequest(
                story_ids=args.story,
                tags=args.tag,
                from_sequence=state["last_sequence"] + 1,
                log_id=state["log_id"],
            )
            log(f"subscribing from sequence {request.from_sequence}"
                + (f" of log {state['log_id']}" if state["log_id"] else ""))
            try:
                for item in stub.Subscribe(request, metadata=metadata):
                    handle(item, state, args.state)
                    delay = FIRST_RETRY_DELAY
            except grpc.RpcError as err:
                code = err.code()
                if code == grpc.StatusCode.FAILED_PRECONDITION and state["log_id"]:
                    if not args.restart_on_new_log:
                        log(f"the server has another log ({err.details()}); the saved position "
                            f"in {args.state} does not apply to it. Rerun with "
                            "--restart-on-new-log to read the new log from the start.")
                        sys.exit(EXIT_OTHER_LOG)
                    log(f"the server has another log ({err.details()}); starting from its start")
                    state = {"log_id": "", "last_sequence": 0}
                    save_state(args.state, state)
                    continue
                if code != grpc.StatusCode.UNAVAILABLE:
                    sys.exit(f"subscribe: {code.name}: {err.details()}")
                log(f"{code.name}: {err.details()}; retrying in {delay:.1f} s")
                time.sleep(delay)
                delay = min(delay * 2, LAST_RETRY_DELAY)


def follow_consumer(args, metadata):
    """Reads named consumer args.consumer, acknowledging each event once printed."""
    delay = FIRST_RETRY_DELAY
    # Acks go over a connection of their own (a local subchannel pool keeps gRPC from sharing
    # the stream's): while this loop waits for an Ack it reads nothing, and events left unread
    # on a shared connection fill its HTTP/2 window until the Ack's answer cannot come through.
    with grpc.insecure_channel(
        target(args.server), options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]
    ) as channel, grpc.insecure_channel(
        target(args.server), options=[("grpc.use_local_subchannel_pool", 1)]
    ) as ack_channel:
        stub = pb_grpc.StoryServiceStub(channel)
        acks = pb_grpc.StoryServiceStub(ack_channel)
        created = False
        while True:
            try:
                if not created:
                    # Idempotent: the same filter again returns the consumer as it stands.
                    stub.CreateConsumer(
                        pb.CreateConsumerRequest(
                            name=args.consumer, story_ids=args.story, tags=args.tag,
                            from_sequence=0,
                        ),
                        metadata=metadata,
                    )
                    created = True
                log(f"reading consumer {args.consumer}")
                request = pb.SubscribeRequest(consumer=args.consumer)
                for item in stub.Subscribe(request, metadata=metadata):
                    done = handled(item)
                    if done:
                        acks.Ack(pb.AckRequest(consumer=args.consumer, sequence=done),
                                 metadata=metadata)
                    delay = FIRST_RETRY_DELAY
            except grpc.RpcError as err:
                code = err.code()
                if code == grpc.StatusCode.FAILED_PRECONDITION:
                    log(f"consumer {args.consumer} belongs to another log ({err.details()})")
                    sys.exit(EXIT_OTHER_LOG)
                if code != grpc.StatusCode.UNAVAILABLE:
                    sys.exit(f"subscribe: {code.name}: {err.details()}")
                log(f"{code.name}: {err.details()}; retrying in {delay:.1f} s")
                time.sleep(delay)
                delay = min(delay * 2, LAST_RETRY_DELAY)


def handled(item):
    """Prints an event; returns the sequence up to which everything is done once `item` is
    (an event's, or what a checkpoint or caught_up says was scanned), or 0 for nothing new."""
    kind = item.WhichOneof("item")
    if kind == "event":
        event = item.event
        print(f"{event.sequence}\t{event.story_id}\t{event.headline}", flush=True)
        return event.sequence
    if kind == "checkpoint":
        return item.checkpoint.sequence
    if kind == "caught_up":
        log(f"caught up at sequence {item.caught_up.head_sequence}; now live")
        return item.caught_up.head_sequence
    return 0


def handle(item, state, path):
    """Acts on one SubscribeResponse: prints events and moves the saved position forward."""
    kind = item.WhichOneof("item")
    if kind == "started":
        if state["log_id"] and state["log_id"] != item.started.log_id:
            # The server checks log_id itself; this guards against one that does not.
            sys.exit(f"subscribe: asked for log {state['log_id']}, got {item.started.log_id}")
        if not state["log_id"]:
            state["log_id"] = item.started.log_id
            save_state(path, state)
        log(f"log {item.started.log_id}, head at {item.started.head_sequence}")
    elif kind == "event":
        event = item.event
        print(f"{event.sequence}\t{event.story_id}\t{event.headline}", flush=True)
        state["last_sequence"] = event.sequence
        save_state(path, state)
    elif kind == "checkpoint":
        # Everything up to the checkpoint was scanned; with filters, none of it may have matched.
        if item.checkpoint.sequence > state["last_sequence"]:
            state["last_sequence"] = item.checkpoint.sequence
            save_state(path, state)
    elif kind == "caught_up":
        log(f"caught up at sequence {item.caught_up.head_sequence}; now live")


def read_state(path):
    """The saved position, or the start of whatever log the server has when there is none."""
    try:
        with open(path, encoding="utf-8") as file:
            saved = json.load(file)
        state = {"log_id": str(saved["log_id"]), "last_sequence": int(saved["last_sequence"])}
    except FileNotFoundError:
        return {"log_id": "", "last_sequence": 0}
    except (ValueError, KeyError, TypeError) as err:
        sys.exit(f"subscribe: {path} is not a state file this script wrote ({err})")
    log(f"resuming after sequence {state['last_sequence']} (from {path})")
    return state


def save_state(path, state):
    """Replaces the state file in one step: a crash leaves the old state or the new, never a mix."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, scratch = tempfile.mkstemp(dir=directory, prefix=".subscribe-state-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            json.dump(state, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(scratch, path)
    except BaseException:
        os.unlink(scratch)
        raise
    # The rename itself survives a power cut only once the directory is on disk too.
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--state",
        default="subscribe-state.json",
        help="where the position is kept (default subscribe-state.json)",
    )
    parser.add_argument(
        "--consumer",
        help="read this named consumer, which the server keeps the position of (no state file)",
    )
    parser.add_argument("--story", action="append", default=[], help="only this story (repeatable)")
    parser.add_argument("--tag", action="append", default=[], help="only stories with this tag")
    parser.add_argument(
        "--restart-on-new-log",
        action="store_true",
        help="when the server has another log, read it from the start instead of exiting 3",
    )
    parser.add_argument(
        "--server",
        default=os.environ.get("STORYWIRE_SERVER", "127.0.0.1:50051"),
        help="host:port (default $STORYWIRE_SERVER or 127.0.0.1:50051)",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("STORYWIRE_TOKEN"),
        help="bearer token, when the server runs with --tokens (default $STORYWIRE_TOKEN)",
    )
    return parser.parse_args()


def log(message):
    """Progress goes to stderr, so stdout carries only events."""
    print(f"subscribe: {message}", file=sys.stderr, flush=True)


def target(server):
    """Accepts the CLI's URL form (http://host:port) as well as grpc's host:port."""
    return re.sub(r"^https?://", "", server).rstrip("/")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
