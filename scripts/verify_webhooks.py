#!/usr/bin/env python3
"""Verifies webhook deliveries with the Standard Webhooks reference library:
verify_webhooks.py SECRET < DELIVERIES

DELIVERIES is JSON: a list of {"headers": {name: value}, "body": "<the raw body>"}. Each is
checked with standardwebhooks.Webhook(SECRET).verify, which checks the signature over
id.timestamp.body and that the timestamp is recent (five minutes). Prints one line per delivery,
"ok" or "bad: <why>", so that the caller sees which failed; exits 0 when every one verifies,
1 when one does not, 2 when the check cannot run. tests/it/webhooks.rs calls it, and scripts/test
installs the package.
"""

import json
import sys

try:
    from standardwebhooks.webhooks import Webhook
except ImportError as error:
    print(
        f"verify_webhooks.py: {error}; scripts/test installs it "
        "(python3 -m pip install standardwebhooks)",
        file=sys.stderr,
    )
    sys.exit(2)


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    webhook = Webhook(sys.argv[1])
    deliveries = json.load(sys.stdin)
    failed = 0
    for delivery in deliveries:
        try:
            webhook.verify(delivery["body"], delivery["headers"])
            print("ok")
        except Exception as error:  # the library raises its own WebhookVerificationError
            failed += 1
            print(f"bad: {type(error).__name__}: {error}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
