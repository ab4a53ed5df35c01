#!/usr/bin/env python3
"""Validates Kubernetes, Istio and Gateway API objects offline (tests/schemas/README.md).

    validate-manifests.py FILE...        every document of every multi-document YAML FILE
    validate-manifests.py --fixtures DIR  DIR/valid/*.yaml must pass; each DIR/invalid/*.yaml must
                                          fail with exactly one error holding its `# expect:` text

Built-in kinds are checked against the Kubernetes API schemas that the pinned
kubernetes-validate package carries (its strict variant: an unknown field fails), custom
resources against the CRD schemas vendored in tests/schemas/, made strict the same way. Run it
with the project venv's python (`make check-manifests` installs what it needs).
"""

import glob
import json
import os
import re
import sys

import jsonschema
import yaml
from jsonschema.exceptions import best_match
from referencing import Registry, Resource

# The oldest Kubernetes that Istio 1.30 (whose CRDs are vendored) supports: a field newer than
# the cluster the objects may land on fails here.
KUBERNETES_VERSION = "1.32.0"
SCHEMA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "schemas")

# The built-in kinds this project renders or a user applies beside them, and whether each is
# namespaced. Anything else is refused rather than waved through.
BUILTIN = {
    ("v1", "ConfigMap"): True,
    ("v1", "Secret"): True,
    ("v1", "Service"): True,
    ("v1", "PersistentVolumeClaim"): True,
    ("v1", "Namespace"): False,
    ("apps/v1", "Deployment"): True,
    ("policy/v1", "PodDisruptionBudget"): True,
    ("networking.k8s.io/v1", "NetworkPolicy"): True,
}

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")


class Loader(yaml.SafeLoader):
    """YAML as kubectl reads it: a duplicate key is an error and a date stays a string."""


def _mapping(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)
Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _unique_map_keys(validator, keys, instance, schema):
    """x-kubernetes-list-type: map — the apiserver refuses two items with the same keys."""
    if schema.get("x-kubernetes-list-type") != "map" or not isinstance(instance, list):
        return
    seen = {}
    for i, item in enumerate(instance):
        if not isinstance(item, dict):
            continue
        key = tuple(item.get(k) for k in keys)
        if key in seen:
            yield jsonschema.ValidationError(
                f"items {seen[key]} and {i} have the same {'/'.join(keys)} {list(key)!r}"
            )
        seen.setdefault(key, i)


Validator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator, {"x-kubernetes-list-map-keys": _unique_map_keys}
)


def strict_crd_schema(node, in_branch=False):
    """An openAPIV3Schema as a JSON Schema that refuses what the apiserver would prune.

    Kubernetes drops unknown fields of a structural schema silently; we want a misspelt field to
    fail, so an object schema without `additionalProperties` or
    `x-kubernetes-preserve-unknown-fields` gets `additionalProperties: false`. Branches of
    oneOf/anyOf/allOf/not only add constraints (`required`), so they stay open.
    """
    if not isinstance(node, dict):
        return node
    out = {k: v for k, v in node.items() if k != "description"}
    if out.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if out.get("x-kubernetes-int-or-string") and "anyOf" not in out and "oneOf" not in out:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if "properties" in out:
        out["properties"] = {k: strict_crd_schema(v) for k, v in out["properties"].items()}
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = strict_crd_schema(out["additionalProperties"])
    if "items" in out:
        out["items"] = strict_crd_schema(out["items"])
    for key in ("oneOf", "anyOf", "allOf"):
        if key in out:
            out[key] = [strict_crd_schema(b, in_branch=True) for b in out[key]]
    if "not" in out:
        out["not"] = strict_crd_schema(out["not"], in_branch=True)
    if out.get("x-kubernetes-list-type") == "set":
        out["uniqueItems"] = True
    is_object = out.get("type") == "object" or "properties" in out
    if (
        is_object
        and not in_branch
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


class Schemas:
    def __init__(self):
        import importlib_resources  # a kubernetes-validate dependency

        base = importlib_resources.files("kubernetes_validate").joinpath(
            "kubernetes-json-schema", f"v{KUBERNETES_VERSION}-local-strict"
        )
        self.k8s_dir = str(base)
        if not os.path.isdir(self.k8s_dir):
            sys.exit(f"kubernetes-validate has no schemas for Kubernetes {KUBERNETES_VERSION} at {self.k8s_dir}")
        with open(os.path.join(self.k8s_dir, "_definitions.json")) as f:
            self.definitions = json.load(f)
        self.object_meta_ref = {
            "$ref": self.definitions["$id"] + "#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
        }
        self.registry = Resource.from_contents(self.definitions) @ Registry()
        self.crds = {}
        for path in sorted(glob.glob(os.path.join(SCHEMA_DIR, "*.json"))):
            with open(path) as f:
                crd = json.load(f)
            self.crds[(f"{crd['group']}/{crd['version']}", crd["kind"])] = crd
        if not self.crds:
            sys.exit(f"no CRD schemas in {SCHEMA_DIR}")
        self.validators = {}

    def known(self):
        return sorted(f"{a} {k}" for a, k in list(BUILTIN) + list(self.crds))

    def namespaced(self, key):
        if key in BUILTIN:
            return BUILTIN[key]
        return self.crds[key]["scope"] == "Namespaced"

    def validator(self, key):
        if key in self.validators:
            return self.validators[key]
        api_version, kind = key
        if key in BUILTIN:
            # kubernetes-validate's file naming: apps/v1 -> apps-v1, networking.k8s.io/v1 -> networking-v1.
            group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
            with open(os.path.join(self.k8s_dir, f"{kind.lower()}-{group_version}.json")) as f:
                schema = json.load(f)
            group, _, version = api_version.rpartition("/")
            gvk = {"group": group, "version": version, "kind": kind}
            if gvk not in schema.get("x-kubernetes-group-version-kind", []):
                sys.exit(f"kubernetes-validate's schema for {kind} is not {api_version}'s")
        else:
            crd = self.crds[key]
            schema = strict_crd_schema(crd["openAPIV3Schema"])
            # The apiserver gives every custom resource these three, whatever its schema says.
            schema.setdefault("properties", {}).update(
                {
                    "apiVersion": {"const": api_version},
                    "kind": {"const": kind},
                    "metadata": self.object_meta_ref,
                }
            )
            schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        self.validators[key] = Validator(schema, registry=self.registry)
        return self.validators[key]


def json_path(parts):
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(document)"


def reason(error):
    """The deepest useful message: a failed oneOf/anyOf says which branch came closest."""
    while error.context:
        # An int-or-string (or any union of types) that is neither: name every type at once.
        if all(e.validator == "type" and not e.path for e in error.context):
            types = " or ".join(sorted({repr(e.validator_value) for e in error.context}))
            return f"{error.instance!r} is not of type {types}", error.absolute_path
        deeper = best_match(error.context)
        if deeper is None:
            break
        error = deeper
    message = error.message
    return (message[:300] + "…") if len(message) > 300 else message, error.absolute_path


def check_metadata(doc, key, schemas):
    """ObjectMeta basics the schemas leave out: a name, DNS-1123 syntax, the namespace, labels."""
    meta = doc.get("metadata")
    if not isinstance(meta, dict):
        return [("metadata", "metadata is required (an object with a name)")]
    errors = []
    name = meta.get("name")
    kind = key[1]
    if not isinstance(name, str) or not name:
        errors.append(("metadata", "metadata.name is required"))
    elif kind == "Service":
        if len(name) > 63 or not DNS1035_LABEL.match(name):
            errors.append(("metadata.name", f"{name!r} is not a DNS-1035 label (a Service name: a-z, 0-9, '-', at most 63)"))
    elif len(name) > 253 or not DNS1123_SUBDOMAIN.match(name):
        errors.append(("metadata.name", f"{name!r} is not a DNS-1123 subdomain (a-z, 0-9, '-', '.', at most 253)"))
    namespace = meta.get("namespace")
    if schemas.namespaced(key):
        # A rendered object names its namespace: without one it lands in kubectl's current one.
        if namespace is None:
            errors.append(("metadata", "metadata.namespace is required for a namespaced kind"))
        elif not isinstance(namespace, str) or len(namespace) > 63 or not DNS1123_LABEL.match(namespace):
            errors.append(("metadata.namespace", f"{namespace!r} is not a DNS-1123 label"))
    elif namespace is not None:
        errors.append(("metadata.namespace", f"{kind} is cluster-scoped: no namespace"))
    for label, value in (meta.get("labels") or {}).items():
        prefix, _, label_name = str(label).rpartition("/")
        if (prefix and (len(prefix) > 253 or not DNS1123_SUBDOMAIN.match(prefix))) or not (
            len(label_name) <= 63 and LABEL_NAME.match(label_name)
        ):
            errors.append((f"metadata.labels.{label}", f"{label!r} is not a label key"))
        if not isinstance(value, str) or (value and (len(value) > 63 or not LABEL_NAME.match(value))):
            errors.append((f"metadata.labels.{label}", f"{value!r} is not a label value"))
    return errors


IANA_SVC_NAME = re.compile(r"^(?=.*[a-z])(?!.*--)[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def check_workload(doc):
    """Two rules of the apiserver's Deployment validation that no schema carries."""
    if doc.get("kind") != "Deployment" or not isinstance(doc.get("spec"), dict):
        return []
    errors = []
    spec = doc["spec"]
    template = spec.get("template") or {}
    labels = (template.get("metadata") or {}).get("labels") or {}
    selector = (spec.get("selector") or {}).get("matchLabels") or {}
    if isinstance(labels, dict) and isinstance(selector, dict):
        for k, v in selector.items():
            if labels.get(k) != v:
                errors.append(("spec.selector.matchLabels", f"{k}: {v!r} does not match the template's labels"))
    containers = (template.get("spec") or {}).get("containers") or []
    for i, container in enumerate(containers if isinstance(containers, list) else []):
        ports = container.get("ports") if isinstance(container, dict) else None
        for j, port in enumerate(ports if isinstance(ports, list) else []):
            name = port.get("name") if isinstance(port, dict) else None
            if isinstance(name, str) and (len(name) > 15 or not IANA_SVC_NAME.match(name)):
                errors.append(
                    (f"spec.template.spec.containers[{i}].ports[{j}].name", f"{name!r} is not an IANA service name (at most 15 of a-z, 0-9, '-')")
                )
    return errors


def validate_file(path, schemas):
    """Returns (number of objects, [error lines])."""
    try:
        with open(path) as f:
            docs = list(yaml.load_all(f, Loader=Loader))
    except (OSError, yaml.YAMLError) as e:
        return 0, [f"{path}: cannot read: {' '.join(str(e).split())}"]
    errors = []
    seen = {}
    count = 0
    for index, doc in enumerate(docs, start=1):
        if doc is None:
            continue
        count += 1
        where = f"{path}: document {index}"
        if not isinstance(doc, dict):
            errors.append(f"{where}: not a mapping")
            continue
        key = (doc.get("apiVersion"), doc.get("kind"))
        name = (doc.get("metadata") or {}).get("name") if isinstance(doc.get("metadata"), dict) else None
        where = f"{where} ({key[1]}/{name})"
        if key not in BUILTIN and key not in schemas.crds:
            errors.append(
                f"{where}: unknown apiVersion/kind {key[0]} {key[1]} (known: {', '.join(schemas.known())})"
            )
            continue
        found = check_metadata(doc, key, schemas) + check_workload(doc)
        for error in schemas.validator(key).iter_errors(doc):
            message, parts = reason(error)
            found.append((json_path(parts), message))
        for p, m in sorted(found):
            errors.append(f"{where}: {p}: {m}")
        identity = (key, (doc.get("metadata") or {}).get("namespace"), name)
        if identity in seen:
            errors.append(f"{where}: the same object as document {seen[identity]}")
        seen.setdefault(identity, index)
    return count, errors


def run_fixtures(directory, schemas):
    passed, failed = 0, 0
    valid = sorted(glob.glob(os.path.join(directory, "valid", "*.yaml")))
    invalid = sorted(glob.glob(os.path.join(directory, "invalid", "*.yaml")))
    if not valid or not invalid:
        sys.exit(f"{directory}: no valid/*.yaml or invalid/*.yaml fixtures")
    for path in valid:
        count, errors = validate_file(path, schemas)
        if errors or not count:
            failed += 1
            print(f"FAIL {path}: must pass, has {len(errors)} error(s):")
            print("\n".join("  " + e for e in errors) or "  (no objects)")
        else:
            passed += 1
            print(f"ok   {path}: {count} objects pass")
    for path in invalid:
        with open(path) as f:
            expects = [line.split(":", 1)[1].strip() for line in f if line.startswith("# expect:")]
        if not expects:
            sys.exit(f"{path}: no '# expect: <message fragment>' line")
        _, errors = validate_file(path, schemas)
        # Exactly one error: the fixture is valid but for the one thing it breaks.
        if len(errors) == 1 and all(e in errors[0] for e in expects):
            passed += 1
            print(f"ok   {path}: fails as expected: {errors[0]}")
        else:
            failed += 1
            print(f"FAIL {path}: expected exactly one error holding {expects}, got {len(errors)}:")
            print("\n".join("  " + e for e in errors) or "  (none: it passed)")
    print(f"manifests: {passed} passed, {failed} failed")
    return failed == 0


def main(argv):
    if len(argv) < 2 or argv[1] in ("-h", "--help"):
        sys.exit(__doc__)
    schemas = Schemas()
    if argv[1] == "--fixtures":
        if len(argv) != 3:
            sys.exit(__doc__)
        sys.exit(0 if run_fixtures(argv[2], schemas) else 1)
    failed = False
    for path in argv[1:]:
        count, errors = validate_file(path, schemas)
        for e in errors:
            print(e)
        if errors or not count:
            failed = True
            print(f"{path}: INVALID ({len(errors)} error(s){'' if count else ', no objects'})")
        else:
            print(f"{path}: {count} objects valid (Kubernetes {KUBERNETES_VERSION}, CRDs in tests/schemas)")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main(sys.argv)
