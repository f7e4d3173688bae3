"""The import rules of docs/architecture.md, checked on the source (no import is executed).

Every `import` statement of `hovcaffe/` counts, also those inside functions (lazy imports) and
under `if TYPE_CHECKING:`: a lazy import is still a dependency, only a later one.

A *room* is a package under `hovcaffe/` or a top-level module (`net`, `weights`, ...). The rules:

* layering: a room imports only rooms on its own level or below (`ROOM_LEVELS`);
* no cycles between rooms;
* `caffe/` imports no torch; `layers/` and `net` import no Spark or Horovod, also not through
  the hovcaffe modules they import;
* `data/` knows nothing of the net: it imports no `layers`, `net`, `training` or `solver`.

`ALLOWED` lists the imports that break a rule today, each with the reason; an entry that is no
longer needed fails the test, so the list only shrinks.
"""
from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "hovcaffe"

#: Rooms by level, lowest first; a room may import rooms of its own level or a lower one.
ROOM_LEVELS: dict[str, int] = {
    # 0: leaves every room may use
    "errors": 0, "utils": 0, "metrics": 0,
    # 1: Caffe's formats, no torch
    "caffe": 1,
    # 2: layer implementations and their fillers; data feeds (which know no layers)
    "fillers": 2, "layers": 2, "data": 2,
    # 3: the net and its weights files
    "net": 3, "weights": 3,
    # 4: training a net, and single-net tools
    "solver": 4, "training": 4, "diffs": 4, "export": 4, "runtime": 4,
    # 5: the run options shared by every entry point (the launchers read them), and their flags
    "options": 5, "option_flags": 5,
    # 6: composing the above: launchers, Spark ML, batch jobs, installation checks
    "distributed": 6, "ml": 6, "jobs": 6, "doctor": 6, "environment": 6,
    # 7: entry points
    "commands": 7, "cli": 7, "launch": 7, "error_report": 7,
}

#: Rooms that may not import certain other rooms, whatever their levels.
FORBIDDEN_ROOMS: dict[str, set[str]] = {
    "data": {"layers", "net", "training", "solver"},
    "layers": {"data"},
    "net": {"data"},
}

#: Third-party packages a room may not import, directly or through the hovcaffe modules it imports.
FORBIDDEN_PACKAGES: dict[str, set[str]] = {
    "caffe": {"torch"},
    "layers": {"pyspark", "horovod"},
    "net": {"pyspark", "horovod"},
}

#: (importing module, imported module) pairs that break a rule today, with the reason.
ALLOWED: dict[tuple[str, str], str] = {
    # Owner arch-launcher (issue 13): the options validate names against tables that live in
    # distributed/; the tables (or the names) belong in options or a module below distributed.
    ("hovcaffe.options", "hovcaffe.distributed.transport"): "connection names (CONNECTIONS)",
    ("hovcaffe.options", "hovcaffe.distributed.backend"): "backend names",
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_module(name: str) -> bool:
    base = PACKAGE.parent.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _imports(path: Path, name: str) -> set[str]:
    """The modules `path` imports (a `from m import x` names m.x when x is a module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            subs = [f"{base}.{alias.name}" for alias in node.names]
            modules = [s for s in subs if _is_module(s)]
            out.update(modules)
            if len(modules) < len(subs):
                out.add(base)
    return out


def _graph() -> dict[str, set[str]]:
    return {_module_name(p): _imports(p, _module_name(p)) for p in sorted(PACKAGE.rglob("*.py"))}


def _with_packages(target: str) -> list[str]:
    """`target` and the packages whose __init__ importing it runs first (a.b for a.b.c)."""
    parts = target.split(".")
    return [target] + [".".join(parts[:i]) for i in range(2, len(parts))] * target.startswith("hovcaffe.")


GRAPH = _graph()


def room_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "hovcaffe" or len(parts) < 2:
        return None
    return parts[1]


def _hovcaffe_edges():
    for module, targets in GRAPH.items():
        for target in targets:
            if target.startswith("hovcaffe.") and _is_module(target):
                yield module, target


def _room_edges() -> set[tuple[str, str, str, str]]:
    """(room, imported room, module, imported module) for imports that cross rooms."""
    out = set()
    for module, target in _hovcaffe_edges():
        a, b = room_of(module), room_of(target)
        if a and b and a != b:
            out.add((a, b, module, target))
    return out


def _paths_to_packages(start: str, banned: set[str]) -> dict[str, list[str]]:
    """For each banned package `start` reaches: one import chain to it (allowed edges cut)."""
    parent: dict[str, str | None] = {start: None}
    todo, found = [start], {}
    while todo:
        module = todo.pop(0)
        for target in sorted(t for t in GRAPH[module] if (module, t) not in ALLOWED):
            for reached in _with_packages(target):
                top = reached.split(".")[0]
                if top in banned and top not in found:
                    chain, at = [top], module
                    while at is not None:
                        chain.insert(0, at)
                        at = parent[at]
                    found[top] = chain
                elif reached in GRAPH and reached not in parent:
                    parent[reached] = module
                    todo.append(reached)
    return found


def test_every_room_has_a_level():
    rooms = {room_of(m) for m in GRAPH} - {None}
    assert rooms <= set(ROOM_LEVELS), (f"rooms without a level: {sorted(rooms - set(ROOM_LEVELS))}; "
                                       "give each one a level in ROOM_LEVELS")


def layering_violations() -> set[tuple[str, str]]:
    found = set()
    for a, b, module, target in _room_edges():
        if a not in ROOM_LEVELS or b not in ROOM_LEVELS:
            continue  # reported by test_every_room_has_a_level
        if ROOM_LEVELS[b] > ROOM_LEVELS[a] or b in FORBIDDEN_ROOMS.get(a, ()):
            found.add((module, target))
    return found


def package_violations() -> dict[tuple[str, str], list[str]]:
    """{(module, first import on the way): chain} for forbidden third-party packages reached."""
    found = {}
    for module in GRAPH:
        banned = FORBIDDEN_PACKAGES.get(room_of(module) or "", set())
        for chain in _paths_to_packages(module, banned).values() if banned else ():
            found[(chain[0], chain[1])] = chain
    return found


def cycles() -> list[list[str]]:
    """Strongly connected sets of rooms (Tarjan), ignoring the allowed imports."""
    edges = defaultdict(set)
    for a, b, module, target in _room_edges():
        if (module, target) not in ALLOWED:
            edges[a].add(b)
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted(ROOM_LEVELS):
        if v not in index:
            visit(v)
    return out


def test_no_room_imports_a_room_above_it_or_a_forbidden_one():
    bad = sorted(layering_violations() - set(ALLOWED))
    assert not bad, "imports against ROOM_LEVELS / FORBIDDEN_ROOMS:\n" + "\n".join(
        f"  {m} -> {t}  ({room_of(m)} level {ROOM_LEVELS[room_of(m)]}, "
        f"{room_of(t)} level {ROOM_LEVELS[room_of(t)]})" for m, t in bad)


def test_forbidden_packages_are_not_imported_even_indirectly():
    bad = package_violations()
    assert not bad, "forbidden third-party imports:\n" + "\n".join(
        "  " + " -> ".join(chain) for chain in bad.values())


def test_no_cycles_between_rooms():
    assert cycles() == []


def test_every_allowed_exception_is_still_needed():
    needed = layering_violations() | _allowed_package_edges() | _cycle_breakers()
    stale = sorted(set(ALLOWED) - needed)
    assert not stale, f"ALLOWED entries no longer needed, remove them: {stale}"


def _allowed_package_edges() -> set[tuple[str, str]]:
    """Allowed entries without which a forbidden third-party package would be reached."""
    out = set()
    for key in list(ALLOWED):
        saved = ALLOWED.pop(key)
        try:
            if key in package_violations():
                out.add(key)
        finally:
            ALLOWED[key] = saved
    return out


def _cycle_breakers() -> set[tuple[str, str]]:
    """Allowed entries whose import closes a cycle between rooms (needed to keep cycles() empty)."""
    rooms = defaultdict(set)
    for a, b, module, target in _room_edges():
        if (module, target) not in ALLOWED:
            rooms[a].add(b)
    out = set()
    for a, b, module, target in _room_edges():
        if (module, target) in ALLOWED and _reaches(rooms, b, a):
            out.add((module, target))
    return out


def _reaches(edges, start: str, goal: str) -> bool:
    seen, todo = set(), [start]
    while todo:
        v = todo.pop()
        if v == goal:
            return True
        if v not in seen:
            seen.add(v)
            todo.extend(edges[v])
    return False


@pytest.mark.parametrize("source, expected", [
    ("import torch\n", {"torch"}),
    ("def f():\n    from hovcaffe.caffe import caffe_pb2\n", {"hovcaffe.caffe.caffe_pb2"}),
    ("from hovcaffe.errors import UserInputError\n", {"hovcaffe.errors"}),
    ("from . import state\n", {"hovcaffe.caffe.state"}),
    ("from .io import read_net\n", {"hovcaffe.caffe.io"}),
])
def test_the_parser_sees_lazy_relative_and_from_imports(tmp_path, source, expected):
    path = tmp_path / "probe.py"
    path.write_text(source)
    assert _imports(path, "hovcaffe.caffe.probe") == expected
