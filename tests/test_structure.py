"""The structure the code keeps (docs/architecture.md): short functions with few positional
parameters in the packages, and launch/ as thin command lines."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("liere", "pipelines", "launch")


def _functions():
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    yield path.relative_to(REPO), node


def test_no_function_is_longer_than_a_screen():
    sizes = ((p, n, n.end_lineno - n.lineno + 1) for p, n in _functions())
    long = [f"{p}:{n.lineno} {n.name} ({lines} lines)" for p, n, lines in sizes if lines > 60]
    assert not long, long


def test_no_function_takes_more_than_five_positional_parameters():
    wide = []
    for path, node in _functions():
        args = [*node.args.posonlyargs, *node.args.args]
        if args and args[0].arg in ("self", "cls"):
            args = args[1:]
        if len(args) > 5:
            wide.append(f"{path}:{node.lineno} {node.name} ({len(args)})")
    assert not wide, wide


def test_command_lines_are_thin_and_import_no_other_entry_point():
    for path in sorted((REPO / "launch").glob("*.py")):
        tree = ast.parse(path.read_text())
        assert len(path.read_text().splitlines()) <= 110, path
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert node.module.split(".")[0] != "launch", f"{path} imports {node.module}"
            if isinstance(node, ast.Import):
                assert all(a.name.split(".")[0] != "launch" for a in node.names), path
