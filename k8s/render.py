#!/usr/bin/env python3
"""Render a kustomize directory of k8s/ the way the pipelines deploy it, for a deploy by hand.

    python3 k8s/render.py k8s/workers/green modelVersion=3 | kubectl apply -f -
    python3 k8s/render.py k8s/jobs/promote modelVersion=3 | kubectl replace --force -f -

`kubectl kustomize DIR`, then every ${name} placeholder in the manifests' string values is
replaced by the value given as name=value: what Spinnaker's Deploy (Manifest) and Run Job
(Manifest) stages do with the baked manifests (their SpEL evaluation, with the variables of
the pipeline's Evaluate Variables stages; k8s/README.md). The substitution works on the parsed
documents, not on the text, so "3" stays a string where Kubernetes wants one (a label, an
argument). A placeholder without a value is an error, as the pipelines' stages set
failOnFailedExpressions. Needs kubectl (its built-in kustomize) and PyYAML.
"""

from __future__ import annotations

import re
import subprocess
import sys
from typing import Any

import yaml

PLACEHOLDER = re.compile(r"\$\{(\w+)\}")
EXPRESSION = re.compile(r"\$\{")


def kustomize(directory: str) -> list[dict[str, Any]]:
    """The documents `kubectl kustomize DIRECTORY` renders (FileNotFoundError without kubectl)."""
    output = subprocess.run(["kubectl", "kustomize", directory], check=True, capture_output=True,
                            text=True).stdout
    return [doc for doc in yaml.safe_load_all(output) if doc]


def placeholders(value: Any) -> set[str]:
    """The names of the ${name} placeholders in the string values (at any depth) of VALUE."""
    if isinstance(value, dict):
        return set().union(*(placeholders(v) for v in value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*(placeholders(v) for v in value)) if value else set()
    if isinstance(value, str):
        if len(EXPRESSION.findall(value)) != len(PLACEHOLDER.findall(value)):
            raise ValueError(f"{value!r}: only plain ${{name}} placeholders belong in k8s/")
        return set(PLACEHOLDER.findall(value))
    return set()


def resolve(value: Any, values: dict[str, str]) -> Any:
    """VALUE with each ${name} in its string values replaced by values[name] (strings stay
    strings); KeyError names a placeholder that has no value."""
    if isinstance(value, dict):
        return {key: resolve(item, values) for key, item in value.items()}
    if isinstance(value, list):
        return [resolve(item, values) for item in value]
    if isinstance(value, str):
        missing = placeholders(value) - set(values)
        if missing:
            raise KeyError(f"no value for {', '.join(sorted(missing))} (in {value!r})")
        return PLACEHOLDER.sub(lambda m: values[m.group(1)], value)
    return value


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[1].startswith("-"):
        print(__doc__, file=sys.stderr)
        return 2
    values = dict(arg.split("=", 1) for arg in argv[2:])
    try:
        documents = resolve(kustomize(argv[1]), values)
    except KeyError as exc:
        print(f"render: {exc.args[0]}", file=sys.stderr)
        return 1
    sys.stdout.write(yaml.safe_dump_all(documents, sort_keys=False))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
