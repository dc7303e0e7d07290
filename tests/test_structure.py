"""The package's shape: no two of minerva's modules import each other, directly or through
others, at module level or inside a function."""

import ast
from pathlib import Path

import minerva

ROOT = Path(minerva.__file__).resolve().parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The minerva modules ``path`` imports by name (``from minerva import x`` counts as
    ``minerva.x`` when that is a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name in modules and name != "minerva"}


def test_no_import_cycles():
    paths = {_module_name(path): path for path in ROOT.rglob("*.py")}
    graph = {name: _imports(path, set(paths)) - {name} for name, path in paths.items()}
    assert "minerva.checkpoint" in graph["minerva.evaluate"]  # the walk sees imports at all

    def cycle_from(start: str) -> list[str] | None:
        stack = [(start, [start])]
        seen = set()
        while stack:
            node, route = stack.pop()
            for target in graph[node]:
                if target == start:
                    return route + [start]
                if target not in seen:
                    seen.add(target)
                    stack.append((target, route + [target]))
        return None

    cycles = [cycle for name in graph if (cycle := cycle_from(name))]
    assert not cycles, " -> ".join(cycles[0])


def test_only_the_native_package_touches_the_compiled_code():
    """The compiled libraries are loaded in one place (``minerva.native.loading``); the rest
    of the package sees the ops and the storage through ``minerva.native``'s modules."""
    modules = {_module_name(path) for path in ROOT.rglob("*.py")}
    modules |= {"minerva._rollout_storage", "minerva._C"}
    inside = ROOT / "native"
    offenders = {
        _module_name(path): sorted(touched)
        for path in ROOT.rglob("*.py")
        if inside not in path.parents
        and (touched := _imports(path, modules) & {"minerva.native.loading",
                                                   "minerva._rollout_storage", "minerva._C"})
    }
    assert not offenders, offenders
    native = {_module_name(path) for path in inside.rglob("*.py")}
    assert _imports(inside / "storage.py", modules | native) >= {"minerva.native.loading"}
