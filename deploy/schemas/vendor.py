#!/usr/bin/env python3
"""Rebuilds kubernetes-v1.33-strict.json from the PyPI package kubernetes-validate.

    pip download --no-deps kubernetes-validate==1.37.0 -d /tmp/kv
    (cd /tmp/kv && python3 -m zipfile -e kubernetes_validate-1.37.0-py3-none-any.whl x)
    python3 deploy/schemas/vendor.py /tmp/kv/x/kubernetes_validate/kubernetes-json-schema/v1.33.0-local-strict

Keeps only the kinds deploy/ renders (KINDS) and the definitions they reach, with every
`$ref` rewritten to point inside the one file, so chaos-tests/tests/deploy.rs can validate
offline. The schemas are the "strict" flavour: `additionalProperties: false` on every
object, so an unknown or misspelt field fails validation.
"""
import json
import re
import sys
from pathlib import Path

# file stem in the package -> `apiVersion/Kind` of a manifest; in the output the key is
# that with `/` replaced by `_` (`/` would need escaping in a JSON pointer): apps_v1_StatefulSet
KINDS = {
    "namespace-v1": "v1/Namespace",
    "pod-v1": "v1/Pod",
    "serviceaccount-v1": "v1/ServiceAccount",
    "configmap-v1": "v1/ConfigMap",
    "secret-v1": "v1/Secret",
    "service-v1": "v1/Service",
    "persistentvolumeclaim-v1": "v1/PersistentVolumeClaim",
    "deployment-apps-v1": "apps/v1/Deployment",
    "statefulset-apps-v1": "apps/v1/StatefulSet",
    "poddisruptionbudget-policy-v1": "policy/v1/PodDisruptionBudget",
    "networkpolicy-networking-v1": "networking.k8s.io/v1/NetworkPolicy",
    "role-rbac-v1": "rbac.authorization.k8s.io/v1/Role",
    "rolebinding-rbac-v1": "rbac.authorization.k8s.io/v1/RoleBinding",
    "clusterrole-rbac-v1": "rbac.authorization.k8s.io/v1/ClusterRole",
    "clusterrolebinding-rbac-v1": "rbac.authorization.k8s.io/v1/ClusterRoleBinding",
}

REF = re.compile(r"^(?:/api/_definitions\.json)?#/\$defs/(.+)$")


def main(src: Path) -> None:
    defs = json.loads((src / "_definitions.json").read_text())["$defs"]
    out: dict = {}

    def rewrite(node):
        if isinstance(node, dict):
            # Descriptions (strings; a *field* named description is a dict) only add weight.
            node = {
                k: rewrite(v)
                for k, v in node.items()
                if k not in ("$id", "$schema") and not (k == "description" and isinstance(v, str))
            }
            ref = node.get("$ref")
            if isinstance(ref, str):
                m = REF.match(ref)
                if not m:
                    raise SystemExit(f"unexpected $ref {ref}")
                visit(m.group(1))
                node["$ref"] = "#/$defs/" + m.group(1)
            return node
        if isinstance(node, list):
            return [rewrite(v) for v in node]
        return node

    def visit(name: str) -> None:
        if name in out:
            return
        out[name] = None  # cycles
        out[name] = rewrite(defs[name])

    for stem, key in KINDS.items():
        out[key.replace("/", "_")] = rewrite(json.loads((src / f"{stem}.json").read_text()))
    doc = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Kubernetes v1.33 object schemas (strict), from kubernetes-validate 1.37.0; "
        "regenerate with deploy/schemas/vendor.py. Keys: apiVersion_Kind with / as _.",
        "$defs": dict(sorted(out.items())),
    }
    dest = Path(__file__).with_name("kubernetes-v1.33-strict.json")
    dest.write_text(json.dumps(doc, indent=1, sort_keys=False) + "\n")
    print(f"{dest}: {len(out)} definitions")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
