#!/usr/bin/python3
"""Validates STAC Items offline, the way stac-validator does: against the core Item schema of the
Item's stac_version and against the schema of each URL in its stac_extensions, every schema read
from tests/data/stac (their $id URLs mapped to the files). Also checks that each asset's href,
relative to the Item, exists. Exit 0: valid; 1: invalid (the reasons on stdout); 2: usage.

    stac_validate.py SCHEMA_DIR ITEM.json...
"""
import json
import os
import sys
import warnings

import jsonschema


def load_store(root):
    store = {}
    for d, _, files in os.walk(root):
        for f in files:
            if f.endswith(".json"):
                with open(os.path.join(d, f)) as fh:
                    s = json.load(fh)
                if "$id" in s:
                    store[s["$id"].rstrip("#")] = s
    projjson = "/usr/share/proj/projjson.schema.json"
    if os.path.exists(projjson):
        with open(projjson) as fh:
            s = json.load(fh)
        store[s.get("$id", "").rstrip("#")] = s
    return store


def validator(schema, store):
    cls = jsonschema.validators.validator_for(schema)
    try:  # jsonschema >= 4.18
        import referencing
        import referencing.jsonschema
        spec = referencing.jsonschema.specification_with
        reg = referencing.Registry().with_resources(
            (uri, referencing.Resource.from_contents(s, default_specification=spec(
                s.get("$schema", "http://json-schema.org/draft-07/schema#"))))
            for uri, s in store.items())
        return cls(schema, registry=reg)
    except ImportError:  # Debian 12's 4.10
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            res = jsonschema.RefResolver(schema["$id"], schema, store=store)
        return cls(schema, resolver=res)


def deepest(e):
    """The innermost reason of a oneOf/allOf failure (the whole Item is no help)."""
    while e.context:
        e = max(e.context, key=lambda c: len(c.absolute_path))
    return e


def check(path, store):
    problems = []
    with open(path) as fh:
        item = json.load(fh)
    core = "https://schemas.stacspec.org/v%s/item-spec/json-schema/item.json" % \
        item.get("stac_version", "?")
    urls = [core] + list(item.get("stac_extensions", []))
    for url in urls:
        schema = store.get(url.rstrip("#"))
        if schema is None:
            problems.append("%s: no local copy of the schema %s" % (path, url))
            continue
        for e in validator(schema, store).iter_errors(item):
            e = deepest(e)
            where = "/".join(str(p) for p in e.absolute_path)
            problems.append("%s: %s: at /%s: %s" % (path, url, where, e.message[:200]))
    base = os.path.dirname(os.path.abspath(path))
    for key, a in item.get("assets", {}).items():
        href = a.get("href", "")
        if "://" in href or os.path.isabs(href):
            problems.append("%s: asset %s: href %s is not relative" % (path, key, href))
        elif not os.path.exists(os.path.join(base, href)):
            problems.append("%s: asset %s: %s does not exist" % (path, key, href))
    return problems


def main():
    if len(sys.argv) < 3:
        print(__doc__)
        return 2
    store = load_store(sys.argv[1])
    problems = []
    for p in sys.argv[2:]:
        problems += check(p, store)
    for p in problems:
        print(p)
    if not problems:
        print("valid: %s" % " ".join(sys.argv[2:]))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
