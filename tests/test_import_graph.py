"""The package's folders are its stages (README "How the code is laid out"); these tests hold the import rules.

Stages, lowest first: the shared pieces at the top of ``nvc/`` (errors, record, rootpath, ...), then ``nvc/sys/``
(the kernel calls), then ``host/`` and ``request/`` side by side, then ``plan/``, then ``apply/``, ``emit/``
and ``commands/``. Every import counts, wherever it is written (module level, inside a function, under
``TYPE_CHECKING``): a lazy import is still a dependency, only a cheaper one. The graph is read from the source
with :mod:`ast`, so nothing is imported. Each rule is also run on a copy of the graph with one planted violation,
so that a rule which can no longer see anything is noticed.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "nvc"

#: The modules that stay at the top of nvc/: small pieces every stage uses, and the ones the launchers import before
#: anything else (the bytecode bundle, the hook's pre-filter, the hook helper's probe and client): they cross no folder.
SHARED = frozenset({
    "nvc", "nvc.atomic_write", "nvc.bytecode_bundle", "nvc.components", "nvc.config_location",
    "nvc.debuglog", "nvc.driver_info", "nvc.errors", "nvc.helper_probe", "nvc.hook_client", "nvc.jsonfast",
    "nvc.oneshot", "nvc.prefilter", "nvc.private_files", "nvc.record", "nvc.rootpath",
})
#: Stage -> rank: a module may import its own stage and lower ranks only; host and request never each other.
RANKS = {"shared": 0, "sys": 1, "host": 2, "request": 2, "plan": 3, "apply": 4, "emit": 5, "commands": 6}
#: Packages whose __init__ must stay empty: every one a hot path crosses is a file read at start-up.
STAGE_PACKAGES = ("host", "request", "plan", "apply", "emit", "commands")


def module_names(root: Path = PACKAGE) -> dict[str, Path]:
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the nvc modules it imports (``from nvc.x import name`` counts as nvc.x, or nvc.x.name when that
    is a module)."""
    modules = module_names(root)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parts, base] if base else parts)
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    targets.add(full if full in modules else base)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def stage(module: str) -> str:
    if module in SHARED:
        return "shared"
    if module == "nvc.__main__":  # ``python -m nvc``: an entry point
        return "commands"
    parts = module.split(".")
    if parts[1] in STAGE_PACKAGES or parts[1] == "sys":
        return parts[1]
    raise AssertionError(f"{module} belongs to no stage: put it in a stage folder, or in SHARED (with a reason)")


def stage_violations(graph: dict[str, set[str]]) -> list[str]:
    """Imports of a higher stage, and between host/ and request/."""
    out = []
    for module, targets in graph.items():
        for target in targets:
            a, b = stage(module), stage(target)
            if RANKS[b] > RANKS[a] or (a != b and {a, b} == {"host", "request"}):
                out.append(f"{module} ({a}) imports {target} ({b})")
    return sorted(out)


def kernel_violations(graph: dict[str, set[str]]) -> list[str]:
    """Only apply/ and sys/ itself import nvc.sys: the kernel is called from one stage."""
    return sorted(f"{module} imports {target}" for module, targets in graph.items() for target in targets
                  if stage(target) == "sys" and stage(module) not in ("apply", "sys"))


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def planted(graph: dict[str, set[str]], module: str, target: str) -> dict[str, set[str]]:
    assert module in graph and target in graph, "the planted edge must join two real modules"
    copy = {m: set(t) for m, t in graph.items()}
    copy[module].add(target)
    return copy


def test_the_graph_sees_lazy_and_type_checking_imports(graph):
    assert "nvc.commands.cli" in graph["nvc.commands.cli_main"]  # inside main(), lazily
    assert "nvc.request.runtime_config" in graph["nvc.commands.runtime_shim"]  # under TYPE_CHECKING (and lazily)
    assert "nvc.host.ldcache.writer" in graph["nvc.host.ldcache"]  # "from nvc.host.ldcache import writer"


def test_every_module_has_a_stage(graph):
    stages = {module: stage(module) for module in graph}
    assert {s for s in stages.values()} == set(RANKS)


def test_a_module_outside_the_stages_is_refused():
    with pytest.raises(AssertionError, match="belongs to no stage"):
        stage("nvc.newcomer")


def test_lower_stages_never_import_higher_ones(graph):
    assert stage_violations(graph) == []


def test_a_planted_upward_import_is_seen(graph):
    assert stage_violations(planted(graph, "nvc.host.discovery", "nvc.plan.planner")) == [
        "nvc.host.discovery (host) imports nvc.plan.planner (plan)"]
    assert stage_violations(planted(graph, "nvc.errors", "nvc.apply.executor")) == [
        "nvc.errors (shared) imports nvc.apply.executor (apply)"]


def test_host_and_request_never_import_each_other(graph):
    crossing = [v for v in stage_violations(graph) if "(host)" in v and "(request)" in v]
    assert crossing == []


def test_a_planted_host_request_import_is_seen_both_ways(graph):
    assert stage_violations(planted(graph, "nvc.host.inventory", "nvc.request.options")) == [
        "nvc.host.inventory (host) imports nvc.request.options (request)"]
    assert stage_violations(planted(graph, "nvc.request.container_env", "nvc.host.discovery")) == [
        "nvc.request.container_env (request) imports nvc.host.discovery (host)"]


def test_only_apply_calls_the_kernel(graph):
    assert kernel_violations(graph) == []
    assert any(stage(t) == "sys" for t in graph["nvc.apply.container_fs"])  # the rule has something to hold


def test_a_planted_kernel_call_outside_apply_is_seen(graph):
    assert kernel_violations(planted(graph, "nvc.commands.hook", "nvc.sys.mount")) == [
        "nvc.commands.hook imports nvc.sys.mount"]


def test_no_import_cycle(graph):
    assert cycles(graph) == []


def test_a_planted_cycle_is_seen(graph):
    assert cycles(planted(graph, "nvc.request.argv", "nvc.commands.cli")) == [
        sorted(["nvc.request.argv", "nvc.commands.cli"])]
    # a longer one: cli_main -> configure -> ... -> back to cli_main
    assert cycles(planted(graph, "nvc.plan.planner", "nvc.commands.cli_main")) != []


def test_stage_packages_are_empty(graph):
    for name in STAGE_PACKAGES:
        assert (PACKAGE / name / "__init__.py").read_text() == "", f"nvc/{name}/__init__.py must stay empty"


def test_the_tree_has_the_stage_folders():
    """A module left at the top level by mistake lands in no stage (test_every_module_has_a_stage); this checks
    the other way: the folders exist and hold modules."""
    modules = module_names()
    for name in (*STAGE_PACKAGES, "sys"):
        assert sum(1 for m in modules if m.startswith(f"nvc.{name}.")) >= 2, name
