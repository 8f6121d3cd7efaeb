"""Checks exported Argo manifests: each YAML file against a strict JSON Schema of
its kind, and, with --json-dir, that it reads as the same document as its JSON twin.

The schemas come from PyPI `hera` (pydantic models generated from Argo's OpenAPI
spec), made strict as the API server is with Argo's full CRDs: an object with
declared properties accepts no other key, so a misspelt field fails. They are
written to SCHEMA_DIR on first use; nothing of Argo's is kept in the repository.

usage: argo-validate.py SCHEMA_DIR FILE.yaml... [--json-dir DIR]
exit 0 when every file passes, 1 otherwise (each problem printed as FILE: PATH: MESSAGE).
"""
import json
import os
import sys

import jsonschema
import yaml

KINDS = ("Workflow", "CronWorkflow", "WorkflowTemplate")


def strict(node):
    if isinstance(node, dict):
        if "properties" in node and "additionalProperties" not in node:
            node["additionalProperties"] = False
        for v in node.values():
            strict(v)
    elif isinstance(node, list):
        for v in node:
            strict(v)


def schemas(folder):
    os.makedirs(folder, exist_ok=True)
    out = {}
    for kind in KINDS:
        path = os.path.join(folder, f"{kind}.strict.schema.json")
        if not os.path.exists(path):
            from hera.workflows import models
            s = getattr(models, kind).model_json_schema(by_alias=True)
            strict(s)
            with open(path + ".tmp", "w") as f:
                json.dump(s, f)
            os.replace(path + ".tmp", path)
        with open(path) as f:
            out[kind] = jsonschema.Draft202012Validator(json.load(f))
    return out


def main(argv):
    json_dir = None
    if "--json-dir" in argv:
        i = argv.index("--json-dir")
        json_dir = argv[i + 1]
        argv = argv[:i] + argv[i + 2:]
    folder, files = argv[0], argv[1:]
    validators = schemas(folder)
    bad = 0
    for path in files:
        with open(path) as f:
            docs = [d for d in yaml.safe_load_all(f) if d is not None]
        for doc in docs:
            kind = doc.get("kind")
            if kind not in validators:
                print(f"{path}: $: kind {kind!r} is not one of {', '.join(KINDS)}")
                bad += 1
                continue
            for e in sorted(validators[kind].iter_errors(doc), key=lambda e: list(e.path)):
                # A field is `anyOf [its type, null]`: say what failed inside.
                while e.context:
                    e = max(e.context, key=lambda c: (len(c.absolute_path), c.validator != "type"))
                where = "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e.absolute_path)
                print(f"{path}: {where}: {e.message[:300]}")
                bad += 1
        if json_dir:
            twin = os.path.join(json_dir, os.path.basename(path)[: -len(".yaml")] + ".json")
            with open(twin) as f:
                if [json.load(f)] != docs:
                    print(f"{path}: $: does not read as the same document as {twin}")
                    bad += 1
    print(f"{len(files)} files, {bad} problems")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
