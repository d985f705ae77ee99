"""Generates the CRDs from the pydantic models: manifests/crds/ (the kustomize base) and the chart's
templates/crds/ (the same YAML, switched by the value crds.enabled).

pydantic speaks JSON Schema; a CRD needs a structural OpenAPI v3 schema: no $ref, no
null types, no titles. This module converts one into the other and adds what only
Kubernetes knows: the status subresource, printer columns, short names, categories.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

from . import models

CATEGORY = "daoflow"


def _structural(node: Any, defs: dict[str, Any], in_status: bool = False) -> Any:
    if isinstance(node, list):
        return [_structural(item, defs, in_status) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[-1]]
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _structural(merged, defs, in_status)
    if "anyOf" in node:
        options = [o for o in node["anyOf"] if o.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"a CRD schema cannot express this union: {node['anyOf']}")
        rest = {k: v for k, v in node.items() if k != "anyOf"}
        if rest.get("default", "x") is None:
            rest.pop("default")
        return _structural({**options[0], **rest}, defs, in_status)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in ("title", "$defs"):
            continue
        if key == "default" and (value is None or in_status):
            continue
        if key == "const":
            out["enum"] = [value]
            continue
        if key == "properties":
            out[key] = {name: _structural(sub, defs, in_status or name == "status") for name, sub in value.items()}
            continue
        out[key] = _structural(value, defs, in_status)
    if out.get("type") == "object" and "properties" not in out:
        # Free-form maps (e.g. BackupDestination.status) are kept as they are written.
        out.pop("additionalProperties", None)
        out["x-kubernetes-preserve-unknown-fields"] = True
    return out


def openapi_schema(model: type[models.Model]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    schema = _structural(raw, raw.get("$defs", {}))
    schema.pop("description", None)
    schema["required"] = ["spec"]
    return schema


def crd(model: type[models.Model]) -> dict[str, Any]:
    kind = model.kind
    version: dict[str, Any] = {
        "name": models.VERSION,
        "served": True,
        "storage": True,
        "subresources": {"status": {}},
        "additionalPrinterColumns": model.printer_columns,
        "schema": {"openAPIV3Schema": {
            "description": (model.__doc__ or "").strip(),
            **openapi_schema(model),
        }},
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{model.plural}.{models.GROUP}",
            # `helm uninstall` keeps them: deleting a CRD deletes every BackupRestore, the audit record.
            "annotations": {"helm.sh/resource-policy": "keep"},
        },
        "spec": {
            "group": models.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": model.plural,
                "singular": kind.lower(),
                "shortNames": model.short_names,
                "categories": [CATEGORY],
            },
            "versions": [version],
        },
    }


HEADER = "# Generated from operator/daoflow_operator/api/models.py by `make crds`. Do not edit.\n"


def render(model: type[models.Model]) -> str:
    return HEADER + yaml.safe_dump(crd(model), sort_keys=False, width=120)


def files() -> dict[str, str]:
    return {f"{models.GROUP}_{m.plural}.yaml": render(m) for m in models.KINDS}


def chart_files() -> dict[str, str]:
    """The chart's CRDs are templates, not its crds/ folder, because helm installs crds/ once and
    never upgrades it; as templates, `helm upgrade` brings a CRD change with the operator that needs it."""
    return {name: "{{- if .Values.crds.enabled }}\n" + text + "{{- end }}\n" for name, text in files().items()}


# Where `make crds` writes, relative to the repository.
OUTPUTS = {"manifests/crds": files, "helm/daoflow-operator/templates/crds": chart_files}


def main(argv: list[str] | None = None) -> int:
    root = Path(argv[0]) if argv else Path(".")
    for folder, make in OUTPUTS.items():
        out = root / folder
        out.mkdir(parents=True, exist_ok=True)
        for name, text in make().items():
            (out / name).write_text(text)
            print(f"wrote {out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
