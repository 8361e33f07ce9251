"""The package's shape: imports point down the layers, no import cycles, a light top level.

    cli                     (and effcn/__init__.py, the public face)
    tools                   bench, compare, runs, sweep, visualize, import_keras
    training                config, the loop and its tasks, evaluation, run directory, ...
    analysis                figures and the arrays behind them (functions of model and data)
    models | data           networks ; datasets (neither imports the other)
    capsules
    errors, io, _version

A module may import from its own layer or any layer below, with no exception: training's figure
callbacks import analysis like any other library.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO

SRC = REPO / "src" / "effcn"
LAYERS = {"effcn._version": 0, "effcn.errors": 0, "effcn.io": 0, "effcn.capsules": 1,
          "effcn.models": 2, "effcn.data": 2, "effcn.analysis": 3, "effcn.training": 4,
          "effcn.tools": 5, "effcn.cli": 6, "effcn.__main__": 6, "effcn": 6}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def part_of(module: str) -> str:
    """The layer entry a module belongs to (its longest prefix in LAYERS)."""
    return max((k for k in LAYERS if module == k or module.startswith(k + ".")), key=len)


def imports_of(path: Path) -> list[tuple[str, int, bool]]:
    """(imported effcn module, line, inside a function) for every import in a file."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            lazy = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                found.extend((a.name, child.lineno, in_function) for a in child.names
                             if a.name.split(".")[0] == "effcn")
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")
                    base = base[: len(base) - child.level + 1]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                if target.split(".")[0] != "effcn":
                    continue
                # "from . import distributed" imports a module, not a name
                for a in child.names:
                    sub = f"{target}.{a.name}"
                    is_module = (SRC.parent / Path(*sub.split("."))).with_suffix(".py").is_file() \
                        or (SRC.parent / Path(*sub.split("."))).is_dir()
                    found.append((sub if is_module else target, child.lineno, in_function))
            visit(child, lazy)

    visit(ast.parse(path.read_text()), False)
    return found


def all_imports():
    for path in sorted(SRC.rglob("*.py")):
        for target, line, lazy in imports_of(path):
            yield module_name(path), path, target, line, lazy


def test_imports_point_down_the_layers():
    wrong = []
    for module, path, target, line, _ in all_imports():
        a, b = part_of(module), part_of(target)
        if LAYERS[b] < LAYERS[a] or a == b or (LAYERS[b] == LAYERS[a] and LAYERS[a] != 2):
            continue
        if {a, b} == {"effcn.models", "effcn.data"}:  # side by side, never into each other
            wrong.append(f"{path.relative_to(REPO)}:{line} ({a} imports {b}, its neighbour)")
        else:
            wrong.append(f"{path.relative_to(REPO)}:{line} ({a} imports {target}, a layer above)")
    assert not wrong, "imports that point up:\n" + "\n".join(wrong)


def test_no_import_cycles_between_modules():
    graph: dict[str, set[str]] = {}
    for module, _, target, _, _ in all_imports():
        if target != module:
            graph.setdefault(module, set()).add(target)
    cycles, state = [], {}

    def walk(node, stack):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                walk(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            walk(node, [node])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_rule_catches_an_upward_import(tmp_path, monkeypatch):
    """The checker itself: a data module importing training is reported."""
    fake = tmp_path / "effcn" / "data"
    fake.mkdir(parents=True)
    (tmp_path / "effcn" / "training").mkdir()
    (tmp_path / "effcn" / "training" / "trainer.py").write_text("")
    (fake / "bad.py").write_text("def f():\n    from ..training import trainer\n")
    monkeypatch.setattr(sys.modules[__name__], "SRC", tmp_path / "effcn")
    (target, _, lazy), = imports_of(fake / "bad.py")
    assert target == "effcn.training.trainer" and lazy
    assert LAYERS[part_of(target)] > LAYERS[part_of("effcn.data.bad")]
    # analysis sits below training: a figure module that imported the trainer would be reported
    assert LAYERS[part_of("effcn.training.trainer")] > LAYERS[part_of("effcn.analysis.curves")]


def test_import_effcn_is_light():
    """The top level is the public face; importing it loads no torch and no sub-package."""
    code = ("import sys, effcn; print(sorted(m for m in sys.modules if m.startswith('effcn') "
            "or m == 'torch'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "['effcn', 'effcn._version']"
    import effcn
    assert {"create_model", "list_models", "load_config", "Trainer", "evaluate_run",
            "RunDir"} <= set(effcn.__all__)
    for name in effcn.__all__:
        assert getattr(effcn, name) is not None
    with pytest.raises(AttributeError):
        effcn.no_such_thing  # noqa: B018


# ------------------------------------------------------------- the architecture page's maps
ARCHITECTURE = REPO / "docs" / "architecture.md"
NOT_IN_THE_REPOSITORY = {"runs", "data", "build", "dist", "site"}  # made by running, ignored


def code_block_after(heading: str) -> list[str]:
    """The lines of the first fenced code block after ``heading`` on the architecture page."""
    lines = ARCHITECTURE.read_text().splitlines()
    start = lines.index(heading)
    opening = next(i for i in range(start, len(lines)) if lines[i].startswith("```"))
    closing = next(i for i in range(opening + 1, len(lines)) if lines[i].startswith("```"))
    return lines[opening + 1:closing]


def mapped_modules() -> set[str]:
    """Paths (relative to src/effcn) of the entries of the module map: a line whose indentation
    is two spaces per folder level and whose first word ends in .py or / is an entry; deeper
    indented lines continue a description."""
    block = code_block_after("## The module map")
    assert block[0] == "src/effcn/"
    folders, found = [], set()
    for line in block[1:]:
        depth, rest = divmod(len(line) - len(line.lstrip(" ")), 2)
        word = line.split()[0] if line.strip() else ""
        if rest or depth < 1 or depth > len(folders) + 1 or not word.endswith((".py", "/")):
            continue  # a description's continuation
        del folders[depth - 1:]
        if word.endswith("/"):
            folders.append(word.rstrip("/"))
        else:
            found.add("/".join(folders + [word]))
    return found


def test_the_module_map_lists_every_module():
    modules = {p.relative_to(SRC).as_posix() for p in SRC.rglob("*.py")}
    mapped = mapped_modules()
    assert not modules - mapped, f"missing from docs/architecture.md: {sorted(modules - mapped)}"
    assert not mapped - modules, f"on the map but not in src/effcn: {sorted(mapped - modules)}"


def test_the_folder_section_lists_every_root_folder():
    listed = {line.split("/")[0] for line in code_block_after("## The folders of the repository")
              if line[:1].strip()}
    folders = {p.name for p in REPO.iterdir() if p.is_dir() and not p.name.startswith(".")
               and p.name not in NOT_IN_THE_REPOSITORY and not p.name.endswith(".egg-info")}
    assert listed == folders
