#!/usr/bin/env python3
"""Extracts the CRD schemas tests/schemas/ vendors from upstream CRD files (tests/schemas/README.md).

    python3 scripts/vendor-crd-schemas.py ISTIO_CRD_ALL_GEN_YAML GATEWAY_API_HTTPROUTES_YAML [OUT_DIR]

ISTIO_CRD_ALL_GEN_YAML is istio/istio's manifests/charts/base/files/crd-all.gen.yaml and
GATEWAY_API_HTTPROUTES_YAML kubernetes-sigs/gateway-api's
config/crd/standard/gateway.networking.k8s.io_httproutes.yaml, at the tags the README names.
Writes one JSON file per kind and version we render: the served version's openAPIV3Schema,
verbatim, beside its group, version, kind and scope. Not CRD-shaped on purpose: nobody can
`kubectl apply` these over a cluster's real CRDs. Running it again on the same inputs gives the
same bytes, so a re-vendoring shows as a reviewable diff.
"""

import json
import os
import sys

import yaml

# (group, version, kind) of every custom resource the render may print.
WANTED = {
    ("extensions.istio.io", "v1alpha1", "WasmPlugin"),
    ("networking.istio.io", "v1", "Gateway"),
    ("networking.istio.io", "v1", "VirtualService"),
    ("networking.istio.io", "v1", "ServiceEntry"),
    ("networking.istio.io", "v1", "DestinationRule"),
    ("networking.istio.io", "v1alpha3", "EnvoyFilter"),
    ("gateway.networking.k8s.io", "v1", "HTTPRoute"),
}


def main(argv):
    if len(argv) not in (3, 4):
        sys.exit(__doc__)
    out_dir = argv[3] if len(argv) == 4 else os.path.join(os.path.dirname(__file__), "..", "tests", "schemas")
    found = set()
    for path in argv[1:3]:
        with open(path) as f:
            for crd in yaml.safe_load_all(f):
                if not crd or crd.get("kind") != "CustomResourceDefinition":
                    continue
                spec = crd["spec"]
                for version in spec["versions"]:
                    key = (spec["group"], version["name"], spec["names"]["kind"])
                    if key not in WANTED:
                        continue
                    if not version.get("served"):
                        sys.exit(f"{path}: {key} is not served")
                    found.add(key)
                    doc = {
                        "group": key[0],
                        "version": key[1],
                        "kind": key[2],
                        "plural": spec["names"]["plural"],
                        "scope": spec["scope"],
                        "openAPIV3Schema": version["schema"]["openAPIV3Schema"],
                    }
                    name = f"{spec['names']['plural']}.{key[0]}_{key[1]}.json"
                    with open(os.path.join(out_dir, name), "w") as out:
                        json.dump(doc, out, indent=1, sort_keys=True)
                        out.write("\n")
                    print("wrote", name)
    missing = WANTED - found
    if missing:
        sys.exit(f"not found in the inputs: {sorted(missing)}")


if __name__ == "__main__":
    main(sys.argv)
