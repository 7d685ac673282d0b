"""kvm/'s imports: no cycle among its modules at run time (issue 13: kvm/ioctl <-> system
<-> vm <-> vcpu was one), and no import statement inside a function (issue 14: four of
them ran on every ioctl call)."""

from __future__ import annotations

import ast
from pathlib import Path

import kvmfpu.kvm

KVM_DIR = Path(kvmfpu.kvm.__file__).parent


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def _runtime_imports(tree: ast.Module) -> set[str]:
    """kvmfpu.kvm modules a module imports when it is imported (not for type checking)."""
    out: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.If) and _is_type_checking(node):
            continue
        for sub in ast.walk(node):
            if isinstance(sub, ast.ImportFrom) and sub.module:
                if sub.module.startswith("kvmfpu.kvm."):
                    out.add(sub.module.removeprefix("kvmfpu.kvm."))
                elif sub.module == "kvmfpu.kvm":
                    out.update(a.name for a in sub.names)
    return out


def _graph() -> dict[str, set[str]]:
    names = {p.stem for p in KVM_DIR.glob("*.py")}
    return {
        p.stem: _runtime_imports(ast.parse(p.read_text())) & names
        for p in KVM_DIR.glob("*.py")
        if p.stem != "__init__"
    }


def test_graph_is_read() -> None:
    g = _graph()
    assert "ioctl" in g["system"] and "vcpu_base" in g["vcpu_xsave"] and "vcpu" in g["vm"]


def test_no_import_cycle_in_kvm() -> None:
    graph = _graph()
    done: set[str] = set()

    def visit(node: str, path: tuple[str, ...]) -> None:
        if node in path:
            raise AssertionError("import cycle: " + " -> ".join((*path, node)))
        if node in done:
            return
        for nxt in sorted(graph.get(node, ())):
            visit(nxt, (*path, node))
        done.add(node)

    for name in sorted(graph):
        visit(name, ())


def test_no_import_statements_inside_functions() -> None:
    found = []
    for path in sorted(KVM_DIR.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                found += [
                    f"{path.name}:{sub.lineno}"
                    for sub in ast.walk(node)
                    if isinstance(sub, (ast.Import, ast.ImportFrom))
                ]
    assert found == []
