"""The package layout holds: no import cycles, no reaching into other modules' private names,
no module over 800 lines, at most 65 modules, and the layers point down (nn/ never imports loading/, inference/ or cli/)."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "socodec"
MAX_LINES = 800
#: a module is one concept a reader can hold: the package stays at or under this many modules
MAX_MODULES = 65
#: a module may import from the layers listed for its folder (and from the top-level modules)
FORBIDDEN = {
    "socodec.nn": ("socodec.loading", "socodec.inference", "socodec.codec", "socodec.cli", "socodec.corpus",
                   "socodec.evaluate", "socodec.demo", "socodec.train"),
    "socodec.loading": ("socodec.inference", "socodec.codec", "socodec.cli", "socodec.corpus", "socodec.evaluate",
                        "socodec.demo", "socodec.train"),
    "socodec.inference": ("socodec.loading", "socodec.codec", "socodec.cli", "socodec.corpus", "socodec.evaluate",
                          "socodec.demo", "socodec.train"),
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, list[str]]]:
    """Every socodec module imported anywhere in the file (TYPE_CHECKING and function bodies too)."""
    found = []
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names if a.name.startswith("socodec")]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if not base.startswith("socodec"):
                continue
            names = [a.name for a in node.names]
            submodules = [f"{base}.{n}" for n in names if f"{base}.{n}" in modules]
            found += [(m, []) for m in submodules]
            found.append((base, [n for n in names if f"{base}.{n}" not in modules]))
    return [(m, n) for m, n in found if m in modules and m != name]


def test_no_import_cycles():
    modules = _modules()
    graph = {name: {m for m, _ in _imports(name, path, modules)} for name, path in modules.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)


def test_no_private_names_across_modules():
    modules = _modules()
    offenders = []
    for name, path in modules.items():
        for module, names in _imports(name, path, modules):
            offenders += [f"{name} imports {module}.{n}" for n in names if n.startswith("_") and not n.startswith("__")]
    assert not offenders, offenders


def test_layers_point_down():
    modules = _modules()
    offenders = []
    for name, path in modules.items():
        for layer, forbidden in FORBIDDEN.items():
            if name == layer or name.startswith(layer + "."):
                offenders += [f"{name} imports {m}" for m, _ in _imports(name, path, modules)
                              if any(m == f or m.startswith(f + ".") for f in forbidden)]
    assert not offenders, offenders


def test_few_full_modules():
    """Concepts, not slivers: the package's module count is bounded (``__init__`` files included)."""
    count = len(list(PACKAGE.rglob("*.py")))
    assert count <= MAX_MODULES, f"{count} modules in socodec/ (at most {MAX_MODULES}): merge slivers into their concept"


def test_modules_are_short():
    long = {str(p.relative_to(REPO)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, long
