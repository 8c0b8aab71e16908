"""The structure the code keeps (docs/architecture.md): short functions with few positional
parameters in the packages, and launch/ as thin command lines.

The sources are parsed in a fresh interpreter: on CPython 3.11 an ``ast.parse`` racing one in another
thread fails with "AST constructor recursion depth mismatch" (python/cpython#106905), and a pytest-xdist
worker can still hold a thread of an earlier test that parses (numba compiling for FFCV, DALI's AutoGraph).
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("liere", "pipelines", "launch")

# per file: its functions (name, first line, length, positional parameters) and the top-level packages
# it imports
PARSE = """
import ast, json, sys
out = {}
for path in sys.argv[1:]:
    text = open(path).read()
    funcs, imports = [], []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = [a.arg for a in (*node.args.posonlyargs, *node.args.args)]
            funcs.append([node.name, node.lineno, node.end_lineno - node.lineno + 1, args])
        elif isinstance(node, ast.ImportFrom) and node.module:
            imports.append(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            imports.extend(a.name.split(".")[0] for a in node.names)
    out[path] = {"functions": funcs, "imports": imports, "lines": len(text.splitlines())}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def sources() -> dict[str, dict]:
    paths = [str(p) for package in PACKAGES for p in sorted((REPO / package).rglob("*.py"))]
    proc = subprocess.run([sys.executable, "-c", PARSE, *paths], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]  # a source that does not parse, named in the traceback
    return {str(Path(p).relative_to(REPO)): info for p, info in json.loads(proc.stdout).items()}


def test_no_function_is_longer_than_a_screen(sources):
    long = [
        f"{path}:{line} {name} ({lines} lines)"
        for path, info in sources.items()
        for name, line, lines, _ in info["functions"]
        if lines > 60
    ]
    assert not long, long


def test_no_function_takes_more_than_five_positional_parameters(sources):
    wide = []
    for path, info in sources.items():
        for name, line, _, args in info["functions"]:
            if args and args[0] in ("self", "cls"):
                args = args[1:]
            if len(args) > 5:
                wide.append(f"{path}:{line} {name} ({len(args)})")
    assert not wide, wide


def test_command_lines_are_thin_and_import_no_other_entry_point(sources):
    launch = {path: info for path, info in sources.items() if Path(path).parent == Path("launch")}
    assert len(launch) >= 5, sorted(launch)
    for path, info in launch.items():
        assert info["lines"] <= 110, path
        assert "launch" not in info["imports"], f"{path} imports from launch"
