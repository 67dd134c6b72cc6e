#!/usr/bin/env python3
"""Validates ninjs exports against a JSON Schema: validate_ninjs.py SCHEMA FILE...

Draft 2020-12 with its format checker, so that date-time and uri are checked, not just typed.
jsonschema checks a format only when the package that parses it is installed, and says nothing
otherwise; so a missing one is an error here, not a silent pass. scripts/test installs them.
Exit 0 when every file is valid, 1 when one is not, 2 when the check itself cannot run.
"""

import json
import sys

NEEDED = "jsonschema rfc3339-validator rfc3986-validator"

try:
    import jsonschema
    import rfc3339_validator  # noqa: F401  (date-time format checking)
    import rfc3986_validator  # noqa: F401  (uri format checking)
    from jsonschema import Draft202012Validator
except ImportError as error:
    print(
        f"validate_ninjs.py: {error}; scripts/test installs what it needs "
        f"(python3 -m pip install {NEEDED})",
        file=sys.stderr,
    )
    sys.exit(2)


def cannot_run(message):
    print(f"validate_ninjs.py: {message}", file=sys.stderr)
    sys.exit(2)


def main(argv):
    if len(argv) < 3:
        cannot_run("usage: validate_ninjs.py SCHEMA FILE...")
    with open(argv[1], encoding="utf-8") as f:
        schema = json.load(f)
    Draft202012Validator.check_schema(schema)
    checker = Draft202012Validator.FORMAT_CHECKER
    for needed in ("date-time", "uri"):
        if needed not in checker.checkers:
            cannot_run(f"jsonschema cannot check format {needed}")
    validator = Draft202012Validator(schema, format_checker=checker)
    failed = False
    for path in argv[2:]:
        with open(path, encoding="utf-8") as f:
            item = json.load(f)
        errors = sorted(validator.iter_errors(item), key=lambda e: list(e.absolute_path))
        for error in errors:
            where = "/".join(str(p) for p in error.absolute_path) or "(root)"
            print(f"{path}: {where}: {error.message}", file=sys.stderr)
        failed = failed or bool(errors)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
