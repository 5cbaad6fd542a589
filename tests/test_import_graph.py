"""The package's layout rules: no import circles between its modules, and no module past 800 lines.

The import graph is read from the source with ``ast``, twice: with the imports that run when a
module is loaded (module level, including ``try`` and plain ``if`` blocks), and with those inside
functions and classes added; never those under ``if TYPE_CHECKING:``. An import of a package counts as an import of
its ``__init__``; ``from package import name`` counts as an import of ``package.name`` when that
is a module, else of the package.
"""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "stellarfit"
MAX_LINES = 800


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module in the package."""
    out = {}
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(body: list[ast.stmt], deferred: bool):
    """The import statements in `body` that run when the module is loaded, and with `deferred`
    also those inside functions and classes (run when they are called); never those under
    ``if TYPE_CHECKING:``."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                yield from _imports(node.body, deferred)
            yield from _imports(node.orelse, deferred)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody, *(h.body for h in node.handlers)):
                yield from _imports(block, deferred)
        elif isinstance(node, (ast.With, ast.For, ast.While)):
            yield from _imports(node.body, deferred)
            yield from _imports(getattr(node, "orelse", []), deferred)
        elif deferred and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            yield from _imports(node.body, deferred)
        elif deferred:  # any other statement holding statements (match): every import in it
            yield from (n for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom)))


def _import_graph(deferred: bool = False) -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in _imports(tree.body, deferred):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                targets = []
                for alias in node.names:
                    sub = f"{source}.{alias.name}"
                    targets.append(sub if sub in modules else source)
            for target in targets:
                # `import a.b.c` of a name that is not a module: count its nearest module
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name and target.split(".")[0] == PACKAGE:
                    graph[name].add(target)
    return graph


def _components(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan): the circles' members."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return components


def _find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each strongly connected component with more than one module."""
    cycles = []
    for component in _components(graph):
        members = set(component)
        start = component[0]
        # shortest path from start back to start within the component (breadth first)
        previous: dict[str, str] = {}
        frontier = [start]
        found = None
        while frontier and found is None:
            nxt = []
            for v in frontier:
                for w in sorted(graph[v] & members):
                    if w == start:
                        found = v
                        break
                    if w not in previous:
                        previous[w] = v
                        nxt.append(w)
                if found is not None:
                    break
            frontier = nxt
        path = [found]
        while path[-1] != start:
            path.append(previous[path[-1]])
        cycles.append([*reversed(path), start])
    return cycles


def test_the_graph_reader_sees_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _find_cycles(graph) == [["a", "b", "c", "a"]]
    assert _find_cycles({"a": {"b"}, "b": set()}) == []


#: deferred imports allowed to close a circle, each with its reason (each is also documented where it is made)
ALLOWED_DEFERRED = {
    ("stellarfit.emulators.base", "stellarfit.emulators.checkpoint"):
        "Emulator.save and Emulator.load are conveniences over the checkpoint module, which builds on the base "
        "class and imports the model types it reads (subclasses of it)",
}


def _check_no_cycles(deferred: bool) -> None:
    graph = _import_graph(deferred)
    if deferred:
        load_time = _import_graph(deferred=False)
        for importer, imported in ALLOWED_DEFERRED:
            assert imported in graph[importer] and imported not in load_time[importer], (
                f"ALLOWED_DEFERRED lists {importer} -> {imported}, which is not a deferred import: remove it from the list")
            graph[importer].discard(imported)
    assert graph[f"{PACKAGE}.inference.fit"], "the graph reader found no imports: is it reading the source?"
    cycles = _find_cycles(graph)
    for cycle, component in zip(cycles, _components(graph)):
        print("import cycle: " + " -> ".join(cycle))
        print("  modules in circles with it: " + ", ".join(component))
    assert not cycles, "import cycles inside the package:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_import_cycles_at_load_time():
    """Module-level imports (what runs on ``import``) form no circle."""
    _check_no_cycles(deferred=False)


def test_no_import_cycles_with_deferred_imports():
    """Nor do they with the imports inside functions added: a deferred import is for start-up
    time (heavy dependencies), not a way around a circle between two modules (except the few in
    ``ALLOWED_DEFERRED``, each with its reason)."""
    _check_no_cycles(deferred=True)


def test_no_module_is_too_long():
    lengths = {name: len(path.read_text().splitlines()) for name, path in _modules().items()}
    too_long = {name: n for name, n in lengths.items() if n > MAX_LINES}
    for name, n in sorted(too_long.items()):
        print(f"{name}: {n} lines")
    assert not too_long, f"modules over {MAX_LINES} lines (split them along their jobs): {too_long}"
