"""Scrapes a Prometheus text endpoint the way Prometheus's own client library parses it.

Usage: python3 prom_scrape.py URL
Prints one JSON object: {"content_type", "families": [{"name", "type", "help",
"samples": [{"name", "labels", "value"}]}]}. Non-finite values are printed as strings
("+Inf", "NaN") so the output stays strict JSON. A text the parser refuses fails the run.
"""

import json
import math
import sys
import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def value(v):
    if math.isfinite(v):
        return v
    return "NaN" if math.isnan(v) else ("+Inf" if v > 0 else "-Inf")


def main(url):
    with urllib.request.urlopen(url, timeout=20) as r:
        content_type = r.headers.get("Content-Type", "")
        text = r.read().decode("utf-8")
    families = []
    for f in text_string_to_metric_families(text):
        families.append({
            "name": f.name,
            "type": f.type,
            "help": f.documentation,
            "samples": [{"name": s.name, "labels": s.labels, "value": value(s.value)} for s in f.samples],
        })
    print(json.dumps({"content_type": content_type, "families": families}))


if __name__ == "__main__":
    main(sys.argv[1])
