#!/usr/bin/env python3
"""Checks a scrape of storywire's GET /metrics: check_metrics.py openmetrics|prometheus FILE

Parses FILE with Python's prometheus_client, the strict OpenMetrics 1.0 parser or the Prometheus
text format parser, as the server said it answered, then holds it to what Prometheus's own
checks (promtool check metrics) ask: every family named storywire_*, documented, counters ending
in _total, units in the name, histograms whose buckets ascend, add up and end with +Inf equal to
their count. On success prints the samples as JSON for the Rust test to read values from:
{"families": {name: {"type", "unit", "help"}}, "samples": [{"name", "labels", "value"}]}.
Exit 0 when the scrape passes, 1 when it does not, 2 when the check itself cannot run.
"""

import json
import math
import sys

NEEDED = "prometheus-client"

try:
    from prometheus_client.openmetrics.parser import (
        text_string_to_metric_families as parse_openmetrics,
    )
    from prometheus_client.parser import (
        text_string_to_metric_families as parse_prometheus,
    )
except ImportError as error:
    print(
        f"check_metrics.py: {error}; scripts/test installs what it needs "
        f"(python3 -m pip install {NEEDED})",
        file=sys.stderr,
    )
    sys.exit(2)

PREFIX = "storywire_"
# The units a name may end in, as the server declares them.
UNITS = ("seconds", "events")


class Invalid(Exception):
    """The scrape breaks a rule; the message says which and where."""


def check_histogram(family):
    buckets = []
    count = total = None
    for sample in family.samples:
        if sample.name == family.name + "_bucket":
            buckets.append((float(sample.labels["le"]), sample.value))
        elif sample.name == family.name + "_count":
            count = sample.value
        elif sample.name == family.name + "_sum":
            total = sample.value
    if count is None or total is None:
        raise Invalid(f"{family.name}: a histogram needs _count and _sum")
    if not buckets or buckets[-1][0] != math.inf:
        raise Invalid(f"{family.name}: the last bucket must be le=+Inf")
    bounds = [bound for bound, _ in buckets]
    if bounds != sorted(set(bounds)):
        raise Invalid(f"{family.name}: bucket bounds must ascend, each once: {bounds}")
    counts = [value for _, value in buckets]
    if counts != sorted(counts):
        raise Invalid(f"{family.name}: buckets must be cumulative: {counts}")
    if counts[-1] != count:
        raise Invalid(f"{family.name}: le=+Inf holds {counts[-1]}, _count says {count}")
    if total < 0:
        raise Invalid(f"{family.name}: a negative _sum {total}")


def check(families):
    seen = {}
    samples = []
    for family in families:
        if not family.name.startswith(PREFIX):
            raise Invalid(f"{family.name}: every metric's name starts with {PREFIX}")
        if family.name in seen:
            raise Invalid(f"{family.name}: two families of one name")
        if not family.documentation.strip():
            raise Invalid(f"{family.name}: no HELP text")
        if family.unit and not family.name.endswith("_" + family.unit):
            raise Invalid(f"{family.name}: unit {family.unit} is not the name's suffix")
        if family.type == "counter":
            for sample in family.samples:
                if not sample.name.endswith("_total"):
                    raise Invalid(f"{sample.name}: a counter's samples end in _total")
        elif family.type == "histogram":
            check_histogram(family)
            if not family.name.endswith(tuple("_" + unit for unit in UNITS)):
                raise Invalid(f"{family.name}: a histogram's name ends with its unit")
        elif family.type != "gauge":
            raise Invalid(f"{family.name}: unexpected type {family.type}")
        for sample in family.samples:
            if sample.value < 0:
                raise Invalid(f"{sample.name}{sample.labels}: negative value {sample.value}")
            samples.append(
                {"name": sample.name, "labels": sample.labels, "value": sample.value}
            )
        seen[family.name] = {
            "type": family.type,
            "unit": family.unit,
            "help": family.documentation,
        }
    if not seen:
        raise Invalid("no metric at all")
    return {"families": seen, "samples": samples}


def main(argv):
    if len(argv) != 3 or argv[1] not in ("openmetrics", "prometheus"):
        print("usage: check_metrics.py openmetrics|prometheus FILE", file=sys.stderr)
        return 2
    with open(argv[2], encoding="utf-8") as f:
        text = f.read()
    parse = parse_openmetrics if argv[1] == "openmetrics" else parse_prometheus
    try:
        # Both parsers are generators: errors surface while iterating.
        checked = check(list(parse(text)))
    except (Invalid, ValueError, KeyError) as error:
        print(f"check_metrics.py: {argv[1]}: {error}", file=sys.stderr)
        return 1
    json.dump(checked, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
