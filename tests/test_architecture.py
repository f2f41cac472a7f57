"""The folder tree is the architecture: the dependency rule of BUILD.md, held by reading imports.

Every `import` and `from ... import` of the product code is read from the source (AST), lazy
imports inside functions included, and checked against one table. A failure names the
importing file, its line and the import that breaks the rule.
"""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
TRAINER = ROOT / "trainer"

# The bottom of trainer/: imported by everything, importing no other part of trainer/.
BASE = {"config", "errors", "layout", "runtime"}
# Unit -> the trainer units it may import (besides itself). A unit is a subpackage of trainer/
# or a module directly in it. Read top-down: tools -> experiment -> {averaging, lr_find} ->
# loop -> reporting -> run_dir -> BASE; lr and data sit beside them on BASE.
ALLOWED = {
    "errors": set(),
    "config": set(),
    "layout": set(),
    "runtime": set(),
    "flags": {"config", "errors"},
    "data": BASE,
    "lr": BASE,
    "run_dir": BASE,
    "reporting": BASE | {"run_dir"},
    "loop": BASE | {"lr", "reporting", "run_dir"},
    "lr_find": BASE | {"loop", "lr", "reporting", "run_dir"},
    "averaging": BASE | {"loop", "lr", "reporting", "run_dir"},
    "experiment": BASE
    | {"data", "lr", "run_dir", "reporting", "loop", "lr_find", "averaging", "flags"},
    "tools": BASE
    | {"data", "lr", "run_dir", "reporting", "loop", "lr_find", "averaging", "experiment"},
    # Public paths and documented commands that only forward.
    "segments": {"lr"},
    "optimizers": {"lr"},
    "predict": {"tools"},
    "evaluate": {"tools"},
    "ensemble": {"tools"},
    "__init__": set(),
}
MAX_TOP_LEVEL_MODULES = 12  # besides __init__.py
MAX_MODULE_LINES = 450


def _unit_of_file(path: pathlib.Path) -> str:
    rel = path.relative_to(TRAINER)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _module_of_file(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: pathlib.Path):
    """(line, module) of every absolute import in the file, `from trainer import x` as trainer.x."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}:{node.lineno}: use absolute imports"
            if node.module in ("trainer", "models", "schedules"):
                for alias in node.names:
                    yield node.lineno, f"{node.module}.{alias.name}"
            else:
                yield node.lineno, node.module


def _unit_of_module(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "trainer":
        return None
    return parts[1] if len(parts) > 1 else "__init__"


def _product_files():
    return sorted(TRAINER.rglob("*.py"))


def test_every_unit_has_a_rule():
    units = {_unit_of_file(p) for p in _product_files()}
    assert units <= set(ALLOWED), f"no dependency rule for {sorted(units - set(ALLOWED))}"


def test_trainer_imports_follow_the_dependency_rule():
    broken = []
    for path in _product_files():
        unit = _unit_of_file(path)
        for line, module in _imports(path):
            target = _unit_of_module(module)
            if target is None or target == unit:
                continue
            if target not in ALLOWED[unit]:
                rel = path.relative_to(ROOT)
                broken.append(f"{rel}:{line}: {unit} may not import {module} ({target})")
    assert not broken, "\n".join(broken)


def test_models_and_schedules_never_import_trainer():
    broken = []
    for package, forbidden in (("models", ("trainer",)), ("schedules", ("trainer", "models"))):
        for path in sorted((ROOT / package).rglob("*.py")):
            for line, module in _imports(path):
                if module.split(".")[0] in forbidden:
                    broken.append(f"{path.relative_to(ROOT)}:{line}: imports {module}")
    assert not broken, "\n".join(broken)


def test_no_import_cycles_between_modules_lazy_imports_included():
    modules = {_module_of_file(p): p for p in _product_files()}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for _, module in _imports(path):
            # `from trainer.lr import segments` names the module trainer.lr.segments.
            while module and module not in modules:
                module = module.rpartition(".")[0]
            if module and module != name and not name.startswith(module + "."):
                targets.add(module)
        graph[name] = targets
    # A package's __init__ imported on the way to its module is not an edge of the cycle.
    state, stack, cycles = {}, [], []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(stack[stack.index(nxt) :] + [nxt]))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "\n".join(cycles)


def test_the_rule_catches_a_wrong_import(tmp_path, monkeypatch):
    # The checker itself: an upward import is named with its file and line.
    fake = TRAINER / "lr" / "zz_fake_for_test.py"
    try:
        fake.write_text("import os\n\n\ndef f():\n    from trainer import experiment\n")
        with pytest.raises(AssertionError, match=r"zz_fake_for_test.py:5: lr may not import"):
            test_trainer_imports_follow_the_dependency_rule()
    finally:
        fake.unlink()


def test_at_most_twelve_modules_directly_in_trainer():
    top = sorted(p.name for p in TRAINER.glob("*.py") if p.name != "__init__.py")
    assert len(top) <= MAX_TOP_LEVEL_MODULES, top


def test_no_product_module_over_450_lines():
    long = []
    for package in ("trainer", "models", "schedules"):
        for path in sorted((ROOT / package).rglob("*.py")):
            lines = len(path.read_text().splitlines())
            if lines > MAX_MODULE_LINES:
                long.append(f"{path.relative_to(ROOT)}: {lines} lines")
    assert not long, "\n".join(long)
