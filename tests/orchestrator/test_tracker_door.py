"""The Tracker is the one door to MLflow's tracking API, and importing the code changes nothing.

Two doors are allowed: `orchestrator/tracking.py` (the Tracker: a study's runs, metrics and artifacts) and the
model registry, `orchestrator/registry.py` with its command line `orchestrator/promote.py` (the store's
registered models; registry.py says why it is its own). Any other module that imports mlflow or reaches for a
Tracker's `.client` fails the first test. Tests may read MLflow directly: they check what landed there.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("orchestrator", "trainables")
DOORS = {"orchestrator/tracking.py", "orchestrator/registry.py", "orchestrator/promote.py"}


def source_files() -> list[Path]:
    return sorted(path for package in PACKAGES for path in (REPO / package).rglob("*.py"))


def mlflow_uses(source: str) -> list[str]:
    """`line: code` of every mlflow import, MlflowClient and `.client` attribute in `source` (`http.client`,
    the standard library's module, is not MLflow's)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [f"{node.lineno}: import {alias.name}" for alias in node.names
                      if alias.name.split(".")[0] == "mlflow"]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "mlflow":
            found.append(f"{node.lineno}: from {node.module} import ...")
        elif isinstance(node, ast.Attribute) and node.attr == "client" and not (
                isinstance(node.value, ast.Name) and node.value.id == "http"):
            found.append(f"{node.lineno}: {ast.unparse(node)}")
        elif isinstance(node, ast.Name) and node.id == "MlflowClient":
            found.append(f"{node.lineno}: MlflowClient")
    return found


def test_only_the_tracker_and_the_model_registry_reach_mlflow() -> None:
    offenders = {}
    for path in source_files():
        relative = path.relative_to(REPO).as_posix()
        if relative not in DOORS and (uses := mlflow_uses(path.read_text())):
            offenders[relative] = uses
    assert offenders == {}, "use (or add) a Tracker method in orchestrator/tracking.py instead"
    assert all((REPO / door).is_file() for door in DOORS)  # a door renamed away must be renamed here too


def test_the_door_check_sees_each_way_around_the_tracker() -> None:
    """The check above, on code that goes around the Tracker in each way it looks for (and on code that does not)."""
    assert mlflow_uses("import mlflow.pytorch\nfrom mlflow.tracking import MlflowClient\n") == [
        "1: import mlflow.pytorch", "2: from mlflow.tracking import ..."]
    assert mlflow_uses("client = MlflowClient(tracking_uri=uri)\n") == ["1: MlflowClient"]
    assert mlflow_uses("def f(self):\n    return self.tracker.client.get_run('x')\n") == ["2: self.tracker.client"]
    assert mlflow_uses("client = tracker.client\n") == ["1: tracker.client"]
    assert mlflow_uses("import http.client\nerror = http.client.HTTPException\nrun = tracker.run('x')\n") == []


def module_names() -> list[str]:
    """Every module of orchestrator/ and trainables/ (not `__main__`, which runs a command when imported)."""
    names = []
    for path in source_files():
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__main__":
            continue
        if parts[-1] == "__init__":
            parts.pop()
        names.append(".".join(parts))
    return names


def libraries() -> list[str]:
    """The other packages our modules import when they are imported (their top-level imports)."""
    found = set()
    for path in source_files():
        for node in run_at_import(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module)
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return sorted(name for name in found if name.split(".")[0] not in (*PACKAGES, "__future__"))


def run_at_import(node: ast.AST):
    """The nodes that run when the module is imported: all but the insides of functions (run when called)."""
    for child in ast.iter_child_nodes(node):
        if not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            yield child
            yield from run_at_import(child)


# The libraries first: what one of them does to the environment when imported (ray, mlflow and umap each set a
# variable) is theirs, not ours to change; then every module of ours, and what changed since.
IMPORT_ALL = """
import importlib, json, os, sys

for name in json.loads(sys.argv[2]):
    try:
        importlib.import_module(name)
    except ImportError:  # `from package import name` of a name that is not a module
        pass
before = dict(os.environ)
for name in json.loads(sys.argv[1]):
    importlib.import_module(name)
after = dict(os.environ)
print(json.dumps(sorted(key for key in before.keys() | after.keys() if before.get(key) != after.get(key))))
"""


@pytest.mark.slow  # about 20 s: it imports torch, ray, mlflow, optuna, umap... in a fresh interpreter
def test_importing_every_module_leaves_the_environment_as_it_was() -> None:
    """Settings for Tune, MLflow and the data roots are made by the launcher when it runs, not by an import."""
    names = module_names()
    assert {"orchestrator.study_runner", "orchestrator.launch", "trainables.data", "orchestrator.report"} <= set(names)
    assert {"torch", "yaml"} <= set(libraries())
    result = subprocess.run([sys.executable, "-c", IMPORT_ALL, json.dumps(names), json.dumps(libraries())], cwd=REPO,
                            capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.splitlines()[-1]) == []


def test_pointing_mlflow_at_a_store_leaves_the_environment_and_mlflow_as_they_were(tmp_path):
    """The model registry points MLflow's fluent API at the study's store; MLflow writes that into
    MLFLOW_TRACKING_URI, which a later launch in the same process would take as its store (it did: a test's
    runs landed in another test's database)."""
    import os

    import mlflow

    from orchestrator.tracking import mlflow_pointed_at

    environment, uri = dict(os.environ), mlflow.get_tracking_uri()
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with mlflow_pointed_at(store):
        assert os.environ["MLFLOW_TRACKING_URI"] == store and mlflow.get_registry_uri() == store
    assert dict(os.environ) == environment and mlflow.get_tracking_uri() == uri
