#!/usr/bin/env python3
"""Writes the seed corpora, fuzz/corpus/<target>/seed-*, from the repository's examples/ and the hostile request
bodies of crates/api/tests/crud.rs (plus a few hand-written selectors and patches). Rerun after changing either."""

import hashlib
import json
import pathlib
import re
import shutil

import yaml

FUZZ = pathlib.Path(__file__).resolve().parent
ROOT = FUZZ.parent
KINDS = ["Cluster", "Service", "Controller"]


def write(target, seeds):
    folder = FUZZ / "corpus" / target
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("seed-*"):
        old.unlink()
    for seed in seeds:
        seed = seed if isinstance(seed, bytes) else seed.encode()
        (folder / f"seed-{hashlib.sha1(seed).hexdigest()[:12]}").write_bytes(seed)


def examples():
    return [yaml.safe_load(path.read_text()) for path in sorted((ROOT / "examples").glob("*.yaml"))]


def hostile():
    """(method, target, content type, body) of the hostile requests, with the huge placeholder bodies left out."""
    text = (ROOT / "crates/api/tests/crud.rs").read_text()
    block = re.search(r'const HOSTILE: &str = r#"(.*?)"#;', text, re.S)
    lines = block.group(1).splitlines() if block else []
    requests = [line.split(" ", 3) for line in lines if line.count(" ") >= 3]
    placeholders = ("BRACKETS", "YAML_DEEP", "JSON_DEEP", "INVALID_UTF8", "a: &a")
    return [r for r in requests if not any(p in r[3] for p in placeholders)]


def stored(document, version=5):
    """A document as the API stores and renders it (the fields StoredObject::from_json needs)."""
    metadata = dict(document.get("metadata") or {})
    metadata.setdefault("namespace", "default")
    metadata.update(uid="6a3e8c1e-1111-4d7a-9a43-0c6f2b1d7e55", resourceVersion=str(version), generation=1,
                    creationTimestamp="2026-01-01T00:00:00Z")
    return {"apiVersion": "cls.dev/v1alpha1", "kind": document["kind"], "metadata": metadata,
            "spec": document.get("spec", {}), "status": {"phase": "Pending"}}


def compact(value):
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def main():
    objects = [stored(example) for example in examples()]
    labelled = stored({"kind": "Cluster", "metadata": {"name": "dev", "labels": {"team": "a"},
                       "annotations": {"note": "keep"}}, "spec": {"platform": {"type": "gcp"}}})
    applied = stored({"kind": "Service", "metadata": {"name": "web", "managedFields": [
        {"manager": "fuzz", "operation": "Apply", "fieldsType": "FieldsV1",
         "fieldsV1": {"f:spec": {"f:replicas": {}, "f:image": {}}, "f:metadata": {"f:labels": {"f:app": {}}}}},
        {"manager": "kubectl", "operation": "Update", "fieldsV1": {"f:spec": {"f:dependsOn": {}}}}]},
        "spec": {"clusterRef": {"name": "dev"}, "image": "x", "replicas": 2, "dependsOn": ["db"]}})
    objects += [labelled, applied]
    requests = hostile()

    write("label_selector", [
        "app=web,tier in (a,b),!legacy,team,env!=prod", "a=b,c==d,e!=f,g in (h,i),j notin (k),l,!m",
        "  app = web , tier  in(  a ,b ) ,! legacy", "app.kubernetes.io/name=x", "a=in,b in (in,notin)",
        "a=,b!=", "team=blue", "a in", "app=web\0app=web\ntier=b\nlegacy=",
    ])
    write("field_selector", [
        "metadata.name=web", "metadata.namespace!=kube-system,metadata.name==x", "spec.platform.type=gcp",
        "spec.clusterRef.name=dev", "spec.x=1", " metadata.name = x ,metadata.namespace==y", "metadata.name!=!w",
    ])
    merge = [body for method, _, kind, body in requests if method == "PATCH" and kind == "merge"]
    merge += ['{"spec":{"replicas":3,"image":null}}', '{"metadata":{"labels":{"team":null,"b":"c"}}}',
              '{"spec":{"platform":{"config":{"a":[1,{"b":null}]}}}}', '{"metadata":{"name":"other"}}']
    write("merge_patch", [compact(o).encode() + b"\0" + body.encode() for o in objects for body in merge])
    json_patches = [body for method, _, kind, body in requests if kind == "json-patch+json"]
    json_patches += [
        '[{"op":"add","path":"/metadata/labels/x","value":"y"},{"op":"test","path":"/metadata/labels/x","value":"y"}]',
        '[{"op":"copy","from":"/spec","path":"/status/copy"},{"op":"move","from":"/status/copy","path":"/status/m"}]',
        '[{"op":"add","path":"/metadata/finalizers","value":[]},{"op":"add","path":"/metadata/finalizers/-","value":"f"}]',
        '[{"op":"replace","path":"/spec/platform/type","value":"aws"},{"op":"remove","path":"/status"}]',
    ]
    write("json_patch", [compact(o).encode() + b"\0" + body.encode() for o in objects for body in json_patches])
    configurations = [yaml.safe_dump(example).encode() for example in examples()]
    configurations += [body.encode() for _, _, kind, body in requests if kind == "apply-patch+yaml"]
    configurations += [b"metadata:\n  name: web\n  labels: {app: web}\nspec:\n  image: y\n"]
    write("apply_patch", configurations + [compact(o).encode() + b"\0" + c for o in objects for c in configurations])
    manifests = []
    for example in examples():
        choice = KINDS.index(example["kind"]) * 2
        manifests.append(bytes([choice]) + compact(example).encode())
        manifests.append(bytes([choice + 1]) + yaml.safe_dump(example).encode())
    plurals = {"clusters": 0, "cluster": 0, "services": 1, "service": 1, "controller": 2}
    for method, target, kind, body in requests:
        if kind in ("json", "yaml") and target in plurals:
            named = 6 if method == "PUT" else 0
            manifests.append(bytes([plurals[target] * 2 + (kind == "yaml") + named]) + body.encode())
    write("manifest", manifests)


if __name__ == "__main__":
    main()
