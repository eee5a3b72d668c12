#!/usr/bin/env python3
"""Lints the chart: Helm's own lint (helm-sdkpy, which renders the templates with values.yaml) and a check that every
`.Values.x.y` a template reads exists in values.yaml, so that a typo cannot render as an empty string.

    pip install --ignore-requires-python helm-sdkpy pyyaml
    python3 charts/cls/ci/lint.py

Exits 1 on any Helm message of severity warning or worse, or on an unknown values path."""

import asyncio
import pathlib
import re
import sys

import yaml

CHART = pathlib.Path(__file__).resolve().parent.parent
SEVERITY = {0: "unknown", 1: "info", 2: "warning", 3: "error"}
# maps whose keys are the user's (any key is fine below them)
FREE_FORM = {"podAnnotations", "serviceAccount.annotations", "serviceMonitor.labels", "tokens.controllers"}


def helm_lint() -> list[str]:
    import helm_sdkpy

    result = asyncio.run(helm_sdkpy.Lint(helm_sdkpy.Configuration()).run(str(CHART)))
    problems = []
    for message in result.get("Messages") or []:
        severity = message.get("Severity", 0)
        line = f"helm lint {SEVERITY.get(severity, severity)}: {message.get('Path')} {message.get('Err') or ''}".rstrip()
        print(line)
        if severity >= 2:
            problems.append(line)
    if result.get("Errors") and not problems:
        problems.append(f"helm lint errors: {result['Errors']}")
    return problems


def values_paths() -> list[str]:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    problems = []
    for template in sorted((CHART / "templates").iterdir()):
        for path in sorted(set(re.findall(r"\.Values\.([A-Za-z0-9_.]+)", template.read_text()))):
            node, walked = values, []
            for key in path.split("."):
                if ".".join(walked) in FREE_FORM:
                    break
                if not isinstance(node, dict) or key not in node:
                    problems.append(f"{template.name}: .Values.{path} is not in values.yaml")
                    break
                node, walked = node[key], walked + [key]
    for name, controller in values["controllers"].items():
        for key in ("enabled", "replicas", "port", "resources"):
            if key not in controller:
                problems.append(f"values.yaml: controllers.{name}.{key} is missing")
    return problems


def main() -> int:
    problems = helm_lint() + values_paths()
    for problem in problems:
        print(f"FAIL {problem}", file=sys.stderr)
    print(f"chart {CHART.name}: {'clean' if not problems else f'{len(problems)} problem(s)'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
