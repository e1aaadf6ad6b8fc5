"""Validates events against the published SIEM schemas, independently of zt-mesh's code.

Usage: python3 siem_validate.py ecs|ocsf FILE
FILE holds one JSON object per line (what a sink wrote). Prints one JSON report
{"checked": N, "errors": [...], "kinds": {...}} and exits 1 if any event fails.

OCSF: each event is checked against the JSON Schema that the `ocsf-json-schema` package
(PyPI, pinned in scripts/test) generates from the OCSF release the event's `metadata.version`
names (the package ships the schema.ocsf.io exports), for the event's `class_uid` and the
profiles in `metadata.profiles`; the generated schemas refuse unknown attributes, wrong types
and ids outside each enum. On top: `type_uid` = class_uid * 100 + activity_id and
`category_uid` = class_uid // 1000, as the OCSF spec defines them.

ECS: no PyPI package ships the ECS field reference, so ecs_9.4.0_fields.json beside this file
is the pinned release's ecs_flat.yml for the field sets used (see its "source"). Every leaf
field must be an ECS field of the right type (keyword: string; long: integer; boolean; ip: an
IP address; date: ISO 8601; array-normalized fields: arrays), `labels.*` keyword strings, and
`event.kind/category/type/outcome` ECS's allowed values, each type one its category expects.
Only the documented custom namespace `zt_mesh.*` is outside ECS.
"""

import datetime
import ipaddress
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
CUSTOM = "zt_mesh"


def flatten(obj, prefix=""):
    for k, v in obj.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and key != "labels" and not key.startswith(CUSTOM):
            yield from flatten(v, key + ".")
        else:
            yield key, v


def ecs_type_ok(kind, v):
    if kind in ("keyword", "constant_keyword", "wildcard", "match_only_text", "text"):
        return isinstance(v, str)
    if kind == "long":
        return isinstance(v, int) and not isinstance(v, bool)
    if kind in ("float", "scaled_float", "double"):
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if kind == "boolean":
        return isinstance(v, bool)
    if kind == "ip":
        try:
            ipaddress.ip_address(v)
            return True
        except (TypeError, ValueError):
            return False
    if kind == "date":
        try:
            datetime.datetime.fromisoformat(v.replace("Z", "+00:00"))
            return isinstance(v, str)
        except (AttributeError, ValueError):
            return False
    return False


def check_ecs(e, fields):
    errs = []
    for key, v in flatten(e):
        if key == CUSTOM or key.startswith(CUSTOM + "."):
            continue
        if key == "labels":
            if not isinstance(v, dict) or not all(isinstance(x, str) for x in v.values()):
                errs.append(f"labels must map names to keyword strings: {v!r}")
            continue
        f = fields.get(key)
        if f is None:
            errs.append(f"{key}: not an ECS field")
            continue
        values = v if isinstance(v, list) else [v]
        if isinstance(v, list) and "array" not in f.get("normalize", []):
            errs.append(f"{key}: ECS does not make it an array")
        for x in values:
            if not ecs_type_ok(f["type"], x):
                errs.append(f"{key}: {x!r} is not of ECS type {f['type']}")
        allowed = f.get("allowed_values")
        if allowed is not None:
            for x in values:
                if x not in allowed:
                    errs.append(f"{key}: {x!r} is not an allowed value ({sorted(allowed)})")
    ev = e.get("event", {})
    for req in ("@timestamp", "ecs"):
        if req not in e:
            errs.append(f"{req} missing")
    cats = ev.get("category", [])
    expected = fields["event.category"]["allowed_values"]
    for t in ev.get("type", []):
        if not any(t in (expected.get(c) or []) for c in cats):
            errs.append(f"event.type {t!r} is expected by none of the categories {cats}")
    if e.get("ecs", {}).get("version") != "9.4.0":
        errs.append(f"ecs.version {e.get('ecs')!r} is not the reference's 9.4.0")
    return errs


class Ocsf:
    def __init__(self):
        from ocsf_json_schema import OcsfJsonSchemaEmbedded, get_ocsf_schema  # noqa: PLC0415
        import jsonschema  # noqa: PLC0415

        self.get = get_ocsf_schema
        self.embedded = OcsfJsonSchemaEmbedded
        self.jsonschema = jsonschema
        self.schemas = {}
        self.cache = {}

    def validator(self, version, class_uid, profiles):
        key = (version, class_uid, tuple(sorted(profiles)))
        if key not in self.cache:
            if version not in self.schemas:
                self.schemas[version] = self.embedded(self.get(version=version))
            s = self.schemas[version]
            name = s.lookup_class_name_from_uid(class_uid=class_uid)
            schema = s.get_class_schema(class_name=name, profiles=list(profiles))
            cls = self.jsonschema.validators.validator_for(schema)
            self.cache[key] = (name, cls(schema))
        return self.cache[key]

    def check(self, e):
        md = e.get("metadata") or {}
        version, uid = md.get("version"), e.get("class_uid")
        if not isinstance(version, str) or not isinstance(uid, int):
            return None, ["metadata.version and class_uid are needed to pick the schema"]
        try:
            name, v = self.validator(version, uid, md.get("profiles") or [])
        except Exception as x:  # an unknown version, class or profile
            return None, [f"no OCSF {version} schema for class {uid}: {x}"]
        errs = [f"{'/'.join(map(str, err.absolute_path)) or '(event)'}: {err.message}" for err in v.iter_errors(e)]
        if e.get("type_uid") != uid * 100 + e.get("activity_id", -1):
            errs.append(f"type_uid {e.get('type_uid')} is not class_uid * 100 + activity_id")
        if e.get("category_uid") != uid // 1000:
            errs.append(f"category_uid {e.get('category_uid')} is not class_uid // 1000")
        return name, errs


def main(kind, path):
    fields = None
    ocsf = None
    if kind == "ecs":
        with open(os.path.join(HERE, "ecs_9.4.0_fields.json"), encoding="utf-8") as f:
            fields = json.load(f)["fields"]
    else:
        ocsf = Ocsf()
    report = {"checked": 0, "errors": [], "kinds": {}}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                e = json.loads(line)
            except ValueError as x:
                report["errors"].append(f"line {n}: not JSON: {x}")
                continue
            report["checked"] += 1
            if kind == "ecs":
                errs, what = check_ecs(e, fields), e.get("event", {}).get("action")
                label = what
            else:
                name, errs = ocsf.check(e)
                what = (e.get("metadata") or {}).get("event_code")
                label = f"{what}: {e.get('class_uid')} {name}"
            report["kinds"][str(what)] = label
            report["errors"].extend(f"line {n} ({what}): {x}" for x in errs)
    print(json.dumps(report))
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
