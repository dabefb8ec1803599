"""Schemathesis hooks for the serving layer's OpenAPI fuzzing (integration-tests/tests/e2e).

The document states every parameter exactly (enums per view, formats, bounds), but a few
rules bind parameters together and JSON Schema cannot say them: `from` before `to`, the
bucket, filter-value and history limits, one filter per dimension, and what `exact=true`
allows for sketch measures. The document states them in words and `x-tributary-limits`; this
hook reshapes a generated query that is valid parameter by parameter so it also keeps those
rules, changing only parameters whose values are valid, so a negative case stays negative.

Needs TRIBUTARY_API (the server's base URL) to read the views' granularities and measures.
"""

import json
import os
import re
import urllib.request
from datetime import date, datetime, timezone

import schemathesis

MINUTE = 60_000
GRANULARITY_MS = {"minute": MINUTE, "hour": 60 * MINUTE, "day": 24 * 60 * MINUTE}
MAX_TIME = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z: the server clamps times to it
SKETCHES = {"count_distinct", "quantile"}
_cache = {}
# The shapes the server reads (chrono's RFC 3339, and YYYY-MM-DD); Python's `fromisoformat`
# alone would also take ISO 8601 forms the server refuses (weeks, no seconds, basic format).
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_DATE_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")


def _get(path):
    if path not in _cache:
        with urllib.request.urlopen(os.environ["TRIBUTARY_API"] + path, timeout=10) as r:
            _cache[path] = json.load(r)
    return _cache[path]


def _views():
    return {v["name"]: v for v in _get("/v1/views")["views"]}


def _limits():
    return _get("/openapi.json")["x-tributary-limits"]


def _parse(value):
    """Epoch ms of a time the server accepts, clamped as it clamps; None if it is not one."""
    if not isinstance(value, str) or not (_DATE.fullmatch(value) or _DATE_TIME.fullmatch(value)):
        return None
    try:
        if len(value) == 10:
            d = date.fromisoformat(value)
            t = datetime(d.year, d.month, d.day, tzinfo=timezone.utc)
        else:
            t = datetime.fromisoformat(value.replace("z", "Z").replace("t", "T"))
            if t.tzinfo is None:
                return None
        ms = int((t - datetime(1970, 1, 1, tzinfo=timezone.utc)).total_seconds() * 1000)
    except (ValueError, OverflowError):
        return None
    return min(max(ms, 0), MAX_TIME)


def _fmt(ms):
    t = datetime.fromtimestamp(ms / 1000, tz=timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def _str(value):
    """The value if it is a string (a negative case may put any type anywhere)."""
    return value if isinstance(value, str) else None


def _as_list(value):
    if isinstance(value, list):
        return value
    return None


def _names(value):
    """A comma list as the server reads it (list or already-joined string)."""
    if isinstance(value, list):
        return [str(v) for v in value]
    if isinstance(value, str):
        return value.split(",") if value else []
    return []


@schemathesis.hook
def map_case(ctx, case):
    # A case hook, not a query hook: schemathesis applies case hooks in its coverage phase too.
    if isinstance(case.query, dict):
        _keep_rules(ctx.operation, case.query)
    return case


def _keep_rules(op, query):
    if op is None:
        return query
    parts = op.path.strip("/").split("/")
    if len(parts) != 4 or parts[:2] != ["v1", "views"]:
        return query
    name, kind = parts[2], parts[3]
    view = _views().get(name)
    if view is None:
        return query
    limits = _limits()
    now = int(datetime.now(timezone.utc).timestamp() * 1000)
    sketch_names = {m["name"] for m in view["measures"] if m["agg"] in SKETCHES}
    exact = query.get("exact") in (True, "true")

    # Filters: one per dimension, values within the limit, and one value each where exact
    # meets a sketch measure. Items the schema rejects are left for the server to refuse.
    filters = _as_list(query.get("filter"))
    if filters is not None:
        measures = _names(query.get("measures")) or [m["name"] for m in view["measures"]]
        if kind == "top":
            measures = [_str(query.get("measure"))]
        single = exact and any(m in sketch_names for m in measures)
        seen, budget, out = set(), limits["max_filter_values"], []
        for item in filters:
            dim, sep, values = item.partition(":") if isinstance(item, str) else ("", "", "")
            if not sep or dim not in view["dimensions"]:
                out.append(item)
                continue
            if dim in seen or budget < 1:
                continue
            seen.add(dim)
            vals = sorted(set(values.split("|")))
            vals = vals[: 1 if single else budget]
            budget -= len(vals)
            out.append(f"{dim}:{'|'.join(vals)}")
        query["filter"] = out

    # Times: as_of within the history, from before to, few enough buckets.
    times = {k: query[k] for k in ("from", "to", "as_of") if k in query}
    parsed = {k: _parse(v) for k, v in times.items()}
    if any(v is None for v in parsed.values()):
        return query
    if "as_of" in parsed:
        oldest = now - limits["history_retention_seconds"] * 1000
        if not oldest + MINUTE < parsed["as_of"] <= now - 1000:
            parsed["as_of"] = now - MINUTE
            query["as_of"] = _fmt(parsed["as_of"])
    to = parsed.get("to", parsed.get("as_of", now))
    frm = parsed.get("from", max(to - 24 * 60 * MINUTE, 0))
    grans = view["granularities"]
    g = GRANULARITY_MS.get(_str(query.get("granularity")), GRANULARITY_MS[grans[0]])
    finest = min(GRANULARITY_MS[x] for x in grans)
    if kind == "top":
        g = finest
        if exact and _str(query.get("measure")) in sketch_names:
            # One bucket of the coarsest granularity: the only exact sketch ranking.
            coarse = max(GRANULARITY_MS[x] for x in grans)
            start = min(frm, MAX_TIME - 1 - coarse) // coarse * coarse
            query["from"], query["to"] = _fmt(start), _fmt(start + coarse)
            return query
    buckets = (to - 1) // g - frm // g + 1 if frm < to else 0
    if 0 < buckets <= min(limits["max_buckets"], 1000) and frm < to:
        return query
    span = 24 * g
    start = min(frm, MAX_TIME - 1 - span) // g * g
    query["from"], query["to"] = _fmt(start), _fmt(start + span)
    return query
