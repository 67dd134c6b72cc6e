#!/usr/bin/env python3
"""Publishes a JSON Lines file of PublishRequest through PublishStream; safe to run again.

Each line is one PublishRequest in proto3 JSON, as demo/seed.jsonl and grpcurl write it. Every
request goes out with an event_id: the line's own, or, for a line without one, an id derived from
the file's name and the line number. The server answers an event_id it already holds with the
original receipt and `duplicate: true`, so rerunning the same file after a crash or a timeout
appends nothing twice. (The derived ids are stable only while the file keeps its name and lines
are only appended to it.)

    python publish.py demo/seed.jsonl --server 127.0.0.1:50051 [--token TOKEN]

Prints one receipt a line, then a summary; exits 1 if the server rejected any line, 2 if the file
does not parse (nothing is sent then).
"""

import argparse
import hashlib
import os
import re
import sys

import grpc
from google.protobuf import json_format

from storywire_stubs import load

pb, pb_grpc = load()

# Event ids follow the story id rules: ^[a-z0-9][a-z0-9-]{0,63}$.
MAX_ID_LEN = 64


def main():
    args = parse_args()
    requests = read_requests(args.file)
    metadata = [("authorization", f"Bearer {args.token}")] if args.token else []

    new = duplicate = rejected = 0
    with grpc.insecure_channel(target(args.server)) as channel:
        stub = pb_grpc.StoryServiceStub(channel)
        stream = (pb.PublishStreamRequest(request=request) for _, request in requests)
        try:
            # One response per request, in the order sent: zip pairs each with its line.
            for (line, request), response in zip(
                requests, stub.PublishStream(stream, metadata=metadata)
            ):
                if response.WhichOneof("result") == "accepted":
                    receipt = response.accepted
                    duplicate += receipt.duplicate
                    new += not receipt.duplicate
                    print(
                        f"line {line}: sequence {receipt.sequence}, {request.story_id} "
                        f"v{receipt.story_version}, event {receipt.event_id} "
                        f"({'duplicate' if receipt.duplicate else 'new'})",
                        flush=True,
                    )
                else:
                    error = response.rejected
                    rejected += 1
                    field = f" [{error.field}]" if error.field else ""
                    print(
                        f"line {line}: rejected, {code_name(error.code)}: {error.message}{field}",
                        flush=True,
                    )
        except grpc.RpcError as err:
            # Every line answered above is in the log; rerunning resends the rest, and the ones
            # already in are answered as duplicates.
            sys.exit(f"publish: {err.code().name}: {err.details()} (rerun to resend the rest)")

    answered = new + duplicate + rejected
    print(
        f"publish: {answered} of {len(requests)} lines answered: "
        f"{new} new, {duplicate} duplicate, {rejected} rejected"
    )
    if answered != len(requests):
        sys.exit("publish: the stream ended early (rerun to resend the rest)")
    sys.exit(1 if rejected else 0)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("file", help="JSON Lines of PublishRequest (proto3 JSON)")
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


def read_requests(path):
    """Parses every line before anything is sent: a typo on line 90 should not publish 89."""
    requests = []
    errors = 0
    with open(path, encoding="utf-8") as lines:
        for number, text in enumerate(lines, start=1):
            if not text.strip():
                continue
            request = pb.PublishRequest()
            try:
                json_format.Parse(text, request)
            except json_format.ParseError as err:
                print(f"{path}:{number}: {err}", file=sys.stderr)
                errors += 1
                continue
            if not request.event_id:
                request.event_id = derived_event_id(path, number)
            requests.append((number, request))
    if errors:
        sys.exit(2)
    return requests


def derived_event_id(path, line):
    """A stable event_id for a line that has none: the file's name and the line number.

    "desk/evening.jsonl" line 7 becomes "evening-jsonl-7". A name too long for the id keeps its
    start and gains a hash of the whole name, so two long names do not collide.
    """
    name = os.path.basename(path).lower()
    slug = re.sub(r"[^a-z0-9]+", "-", name).strip("-") or "line"
    suffix = f"-{line}"
    if len(slug) + len(suffix) > MAX_ID_LEN:
        digest = hashlib.sha256(name.encode()).hexdigest()[:8]
        slug = f"{slug[: MAX_ID_LEN - len(suffix) - 9].rstrip('-')}-{digest}"
    return slug + suffix


def code_name(number):
    """google.rpc.Code number -> its name, as the CLI and grpcurl print it."""
    for code in grpc.StatusCode:
        if code.value[0] == number:
            return code.name
    return f"code {number}"


def target(server):
    """Accepts the CLI's URL form (http://host:port) as well as grpc's host:port."""
    return re.sub(r"^https?://", "", server).rstrip("/")


if __name__ == "__main__":
    main()
