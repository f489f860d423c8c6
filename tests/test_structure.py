"""The code's shape, checked: no import cycles between lego_core's parts, modules of one idea."""

from __future__ import annotations

import ast
from pathlib import Path

LEGO_CORE = Path(__file__).resolve().parent.parent / "lego_core"


def _module_name(path: Path) -> str:
    parts = path.relative_to(LEGO_CORE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _part(module: str) -> str | None:
    """The subpackage (or top-level module) of lego_core a module belongs to."""
    parts = module.split(".")
    return parts[1] if parts[0] == "lego_core" and len(parts) > 1 else None


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for n in ast.walk(node))
    return skip


def _imports(path: Path) -> set[str]:
    """Every lego_core module ``path`` imports, at module level or inside functions alike (a lazy
    import is a dependency all the same), except under ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _type_checking_nodes(tree)
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return {m for m in found if m.startswith("lego_core.")}


def import_graph() -> dict[str, dict[str, list[str]]]:
    """part -> imported part -> the imports that make the edge ("module -> module")."""
    parts = {p.stem for p in LEGO_CORE.iterdir() if p.is_dir() and (p / "__init__.py").exists() or p.suffix == ".py"}
    graph: dict[str, dict[str, list[str]]] = {}
    for path in sorted(LEGO_CORE.rglob("*.py")):
        source = _part(_module_name(path) if path.name != "__init__.py" or path.parent != LEGO_CORE else "lego_core")
        if source is None:
            continue
        for target in _imports(path):
            part = _part(target)
            if part in parts and part != source:
                graph.setdefault(source, {}).setdefault(part, []).append(f"{_module_name(path)} -> {target}")
    return graph


def _cycle(graph) -> list[str] | None:
    """One cycle of parts, if there is any (depth-first search)."""
    state: dict[str, int] = {}   # 1 on the current path, 2 done
    path: list[str] = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, {})):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_import_graph_sees_lazy_imports_and_finds_cycles():
    graph = import_graph()
    assert "vllm" in graph["diffusion"]      # diffusion/generate.py imports the VLLM inside a function
    assert _cycle({"a": {"b": []}, "b": {"c": []}, "c": {"a": []}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b": []}, "b": {}}) is None


def test_metrics_score_images_and_never_generate_them():
    assert "diffusion" not in import_graph().get("metrics", {})


def test_no_two_parts_of_lego_core_import_each_other():
    graph = import_graph()
    cycle = _cycle(graph)
    if cycle:
        edges = [f"{a} -> {b}: " + "; ".join(sorted(set(graph[a][b]))[:3]) for a, b in zip(cycle, cycle[1:])]
        raise AssertionError("import cycle between lego_core parts:\n" + "\n".join(edges))


MAX_LINES = 450


def test_lego_core_modules_hold_one_idea_each():
    """At most 450 lines a module: past that a file holds several ideas and wants splitting."""
    too_long = {}
    for path in sorted(LEGO_CORE.rglob("*.py")):
        name = path.relative_to(LEGO_CORE.parent).as_posix()
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > MAX_LINES:
            too_long[name] = lines
    assert not too_long, f"modules over {MAX_LINES} lines (split them by idea): {too_long}"
