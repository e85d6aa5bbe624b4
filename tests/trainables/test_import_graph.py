"""The import graph of trainables/ and orchestrator/: the catalog imports the trainables, never the reverse,
and no cycle in either package (nor between them).

Read from the source (every import statement, at module level or inside a function), so a cycle hidden
by a function-level import is found as well as one Python would trip over at import time.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "trainables"
ORCHESTRATOR = PACKAGE.parent / "orchestrator"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, known: set[str]) -> set[str]:
    """The modules of `known` that `source` imports: `from trainables import gasten` and
    `from trainables.gasten import X` both count as importing `trainables.gasten`."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return found & known


def import_graph(sources: dict[str, str]) -> dict[str, set[str]]:
    known = set(sources)
    return {name: imported_modules(source, known) - {name} for name, source in sources.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle as [a, b, ..., a], or [] when the graph has none (depth-first search)."""
    state: dict[str, str] = {}  # "open" while on the current path, "done" once fully explored
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = "open"
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = "done"
        return []

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return []


def package_graph(*packages: Path) -> dict[str, set[str]]:
    return import_graph({module_name(path): path.read_text()
                         for package in packages for path in sorted(package.rglob("*.py"))})


def trainables_graph() -> dict[str, set[str]]:
    return package_graph(PACKAGE)


def test_only_the_catalog_imports_the_catalog_and_it_imports_the_trainables():
    graph = trainables_graph()
    assert len(graph) >= 20
    assert sorted(name for name, targets in graph.items() if "trainables.catalog" in targets) == []
    assert {"trainables.definitions", "trainables.classifier", "trainables.clustering_search",
            "trainables.ood.evaluate"} <= graph["trainables.catalog"]
    # Every definition module imports its types from trainables.definitions.
    assert {"trainables.classifier", "trainables.gasten", "trainables.evaluate_classifier",
            "trainables.clustering_search"} <= {name for name, targets in graph.items()
                                                if "trainables.definitions" in targets}


def test_trainables_have_no_import_cycle():
    assert find_cycle(trainables_graph()) == []


def test_orchestrator_and_trainables_have_no_import_cycle():
    graph = package_graph(ORCHESTRATOR, PACKAGE)
    # The split packages are walked too: spec/ and report/ modules import each other, never their package.
    assert {"orchestrator.spec.study", "orchestrator.report.write", "orchestrator.tune_stage"} <= set(graph)
    assert "orchestrator.spec.fields" in graph["orchestrator.spec.study"]
    assert find_cycle(graph) == []


@pytest.mark.parametrize("sources, cycle", [
    ({"trainables.a": "from trainables import b", "trainables.b": "def f():\n    from trainables.a import X"},
     ["trainables.a", "trainables.b", "trainables.a"]),
    ({"trainables.a": "import trainables.b", "trainables.b": "from trainables.c import Y",
      "trainables.c": "from trainables import a"},
     ["trainables.a", "trainables.b", "trainables.c", "trainables.a"]),
    ({"trainables.a": "from trainables import b", "trainables.b": "import torch", "trainables.c": "import trainables.a"},
     []),
])
def test_the_cycle_finder_sees_a_cycle_hidden_in_a_function(sources, cycle):
    assert find_cycle(import_graph(sources)) == cycle


MAX_LINES = 500  # issue 17: every module small enough to read in one sitting


def test_no_source_file_of_orchestrator_or_trainables_is_over_500_lines():
    sizes = {str(path.relative_to(PACKAGE.parent)): len(path.read_text().splitlines())
             for folder in (ORCHESTRATOR, PACKAGE) for path in folder.rglob("*.py")}
    assert len(sizes) > 50, sorted(sizes)  # the walk found the packages
    assert {name: lines for name, lines in sizes.items() if lines > MAX_LINES} == {}


SCHEMA = ORCHESTRATOR / "spec" / "schema.py"
STAGES = ORCHESTRATOR / "stages"


def stage_kind_classes(schema_source: str) -> set[str]:
    """The spec dataclasses that are stage kinds: those with a `kind` field (`kind: Literal["tune"]`)."""
    return {node.name for node in ast.walk(ast.parse(schema_source)) if isinstance(node, ast.ClassDef)
            and any(isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name) and item.target.id == "kind"
                    for item in node.body)}


def _class_names(node: ast.AST) -> set[str]:
    """`TuneStage`, `spec.TuneStage`, `(TuneStage, JobStage)` -> the class names they name."""
    if isinstance(node, ast.Tuple):
        return set().union(*map(_class_names, node.elts))
    if isinstance(node, ast.BinOp):  # isinstance(stage, TuneStage | JobStage)
        return _class_names(node.left) | _class_names(node.right)
    if isinstance(node, ast.Name):
        return {node.id}
    if isinstance(node, ast.Attribute):
        return {node.attr}
    return set()


def kind_switches(source: str, kinds: set[str]) -> list[tuple[int, str]]:
    """(line, class) of each test of a stage's kind by its class: `isinstance(s, TuneStage)`, on a tuple
    of them too, `issubclass`, `type(s) is TuneStage` and a `case TuneStage():` pattern."""
    found = []
    for node in ast.walk(ast.parse(source)):
        named: set[str] = set()
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in (
                "isinstance", "issubclass") and len(node.args) == 2:
            named = _class_names(node.args[1])
        elif isinstance(node, ast.Compare) and isinstance(node.left, ast.Call) and isinstance(
                node.left.func, ast.Name) and node.left.func.id == "type":
            named = set().union(*map(_class_names, node.comparators))
        elif isinstance(node, ast.MatchClass):
            named = _class_names(node.cls)
        found += [(node.lineno, name) for name in sorted(named & kinds)]
    return found


def stage_kind_switches_outside_stages() -> dict[str, list[tuple[int, str]]]:
    kinds = stage_kind_classes(SCHEMA.read_text())
    found = {}
    for folder in (ORCHESTRATOR, PACKAGE):
        for path in sorted(folder.rglob("*.py")):
            if STAGES in path.parents:
                continue
            if switches := kind_switches(path.read_text(), kinds):
                found[str(path.relative_to(PACKAGE.parent))] = switches
    return found


def test_the_stage_kind_classes_are_read_from_the_schema():
    assert stage_kind_classes(SCHEMA.read_text()) == {"TuneStage", "OptunaStage", "JobStage"}


def test_no_module_outside_orchestrator_stages_tests_a_stage_kind_by_its_class():
    """issue 17: what differs between kinds is asked of `orchestrator.stages.kind_of(stage)`."""
    assert stage_kind_switches_outside_stages() == {}


@pytest.mark.parametrize("source, found", [
    ("if isinstance(stage, TuneStage):\n    pass", [(1, "TuneStage")]),
    ("x = isinstance(stage, (spec.JobStage, OptunaStage))", [(1, "JobStage"), (1, "OptunaStage")]),
    ("x = isinstance(stage, TuneStage | JobStage)", [(1, "JobStage"), (1, "TuneStage")]),
    ("x = type(stage) is OptunaStage", [(1, "OptunaStage")]),
    ("match stage:\n    case JobStage(job=name):\n        pass", [(2, "JobStage")]),
    ("x = isinstance(stage, Mapping) or stage.kind == 'tune'", []),
])
def test_the_kind_switch_finder_sees_each_spelling(source, found):
    assert kind_switches(source, {"TuneStage", "OptunaStage", "JobStage"}) == found
