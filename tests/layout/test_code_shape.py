"""Size limits that keep the package readable, checked on the source (STYLE.md "small files").

A class over 300 lines or a function over 60 lines must say why in a `# long: <reason>` comment
within its first lines; a module over 800 lines must be split. Generated protobuf code is exempt.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ROOMS = ("proto", "shm", "core", "backends", "frontends", "bench")
MAX_CLASS, MAX_FUNCTION, MAX_MODULE = 300, 60, 800
REASON_WINDOW = 6  # lines after the `def`/`class` line where the reason comment may sit


def _sources() -> list[Path]:
    return sorted(p for room in ROOMS for p in (ROOT / room).rglob("*.py")
                  if not p.name.endswith(("_pb2.py", "_pb2_grpc.py")))


def _has_reason(lines: list[str], node: ast.AST) -> bool:
    first = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))])
    window = lines[first - 1: node.lineno + REASON_WINDOW]
    return any("# long:" in line for line in window)


def oversized(path: Path) -> list[str]:
    text = path.read_text()
    lines = text.splitlines()
    where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    found = []
    if len(lines) > MAX_MODULE:
        found.append(f"{where}: {len(lines)} lines (split before {MAX_MODULE})")
    for node in ast.walk(ast.parse(text, str(path))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            limit = MAX_CLASS if isinstance(node, ast.ClassDef) else MAX_FUNCTION
            size = (node.end_lineno or node.lineno) - node.lineno + 1
            if size > limit and not _has_reason(lines, node):
                found.append(f"{where}:{node.lineno} {node.name} is {size} lines (over {limit}, no '# long:' reason)")
    return found


def test_no_oversized_class_function_or_module():
    problems = [p for path in _sources() for p in oversized(path)]
    assert problems == []


def test_the_check_catches_a_long_function_and_accepts_a_reason(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION + 5))
    plain = tmp_path / "plain.py"
    plain.write_text(f"def f():\n{body}\n")
    reasoned = tmp_path / "reasoned.py"
    reasoned.write_text(f"def f():\n    # long: one table of assignments reads best in one place\n{body}\n")
    assert len(oversized(plain)) == 1 and "f is" in oversized(plain)[0]
    assert oversized(reasoned) == []


def test_the_check_catches_a_long_class(tmp_path):
    methods = "\n".join(f"    def m{i}(self):\n        return {i}\n" for i in range(MAX_CLASS // 3 + 5))
    path = tmp_path / "big.py"
    path.write_text(f"class Big:\n{methods}\n")
    assert any("Big is" in p for p in oversized(path))
