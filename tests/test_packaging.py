"""The project's own files agree with each other: what a newcomer reads is what runs."""
import ast
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, from PyPI (a test dependency there)
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]


def _pyproject():
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_environment_yml_lists_the_same_dependencies_as_pyproject():
    project = _pyproject()["project"]
    wanted = set(project["dependencies"]) | set(project["optional-dependencies"]["test"])
    listed = set()
    in_pip = False
    for line in (REPO / "environment.yml").read_text().splitlines():
        stripped = line.strip()
        if stripped == "- pip:":
            in_pip = True
        elif in_pip and stripped.startswith("- "):
            listed.add(stripped[2:].strip())
    assert listed == wanted


def test_dependencies_are_ranges_not_pins():
    project = _pyproject()["project"]
    for requirement in project["dependencies"] + project["optional-dependencies"]["test"]:
        assert "==" not in requirement, requirement
        assert re.search(r">=", requirement), requirement
    assert project["requires-python"] == ">=3.10"
    assert project["scripts"]["course"] == "course_utils.cli:main"


def test_readme_quick_start_is_two_commands_and_ci_runs_the_test_one():
    readme = (REPO / "README.md").read_text()
    quick = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```(?:bash|sh)?\n(.*?)```", quick, re.S).group(1)
    commands = [l for l in block.splitlines() if l.strip() and not l.strip().startswith("#")]
    assert commands == ["make course", "make test"]
    assert "make test" in (REPO / ".ci" / "run").read_text()


def test_notebooks_are_committed_without_outputs():
    import nbformat
    for path in sorted((REPO / "notebooks").glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, path.name


def test_every_lesson_has_its_exercise_and_solution():
    lessons = sorted(p.name for p in (REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    assert len(lessons) >= 4
    for folder in ("exercises", "solutions"):
        assert sorted(p.name for p in (REPO / folder).glob("[0-9][0-9]_*.ipynb")) == lessons, folder
    readme = (REPO / "README.md").read_text()
    assert all(f"`notebooks/{name}`" in readme for name in lessons), "README's lesson table is incomplete"


def _course_modules():
    return {p.stem: p for p in sorted((REPO / "course_utils").glob("*.py")) if p.stem != "__init__"}


def _imported_course_modules(path):
    """The course_utils modules `path` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                found.add(node.module.split(".")[0])
            elif node.level == 1:
                found.update(alias.name for alias in node.names)
            elif node.module and node.module.startswith("course_utils."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("course_utils."))
    return found


def test_course_utils_has_no_import_cycles():
    modules = _course_modules()
    graph = {name: _imported_course_modules(path) & set(modules) for name, path in modules.items()}

    def cycle_from(start, path):
        for nxt in sorted(graph[path[-1]]):
            if nxt == start:
                return path + [nxt]
            if nxt not in path:
                found = cycle_from(start, path + [nxt])
                if found:
                    return found
        return None

    cycles = [" -> ".join(c) for c in (cycle_from(m, [m]) for m in sorted(graph)) if c]
    assert not cycles, f"import cycles: {cycles}"


def test_lessons_modules_do_not_import_the_instructor_tooling():
    tooling = {"cli", "grading", "notebooks"}
    for name, path in _course_modules().items():
        if name not in tooling:
            assert not _imported_course_modules(path) & tooling, name


def _unguarded_imports(path):
    """Top-level module names imported outside a `try: ... except ImportError` block."""
    tree = ast.parse(path.read_text())
    guarded = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(
                isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError")
                for h in node.handlers):
            guarded.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    names = set()
    for node in ast.walk(tree):
        if id(node) in guarded:
            continue
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def _python_310():
    """A working Python 3.10 interpreter (on PATH, or one pyenv installed), or None."""
    candidates = [shutil.which("python3.10"),
                  *sorted(map(str, Path.home().glob(".pyenv/versions/3.10*/bin/python3.10")))]
    for candidate in filter(None, candidates):
        probe = subprocess.run([candidate, "-c", "import sys; print(sys.version_info[:2])"],
                               capture_output=True, text=True)
        if probe.returncode == 0 and probe.stdout.strip() == "(3, 10)":
            return candidate
    return None


def test_the_package_and_its_tests_need_nothing_python_3_10_lacks():
    """requires-python says 3.10: nothing may import a standard module newer than that (tomllib
    is 3.11's), and every file must compile under 3.10."""
    python310 = _python_310()
    if python310 is None:
        pytest.skip("no Python 3.10 interpreter here (install one, e.g. pyenv install 3.10)")
    files = sorted([*(REPO / "course_utils").rglob("*.py"), *(REPO / "tests").glob("*.py"),
                    *(REPO / "benchmarks").glob("*.py"), REPO / "conftest.py"])
    script = ("import json, sys\n"
              "for f in sys.argv[1:]: compile(open(f).read(), f, 'exec')\n"
              "print(json.dumps(sorted(sys.stdlib_module_names)))")
    result = subprocess.run([python310, "-c", script, *map(str, files)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    old_stdlib = set(json.loads(result.stdout))
    newer = set(sys.stdlib_module_names) - old_stdlib
    offending = {f"{path.relative_to(REPO)}: {name}" for path in files
                 for name in _unguarded_imports(path) & newer}
    assert not offending, f"standard modules Python 3.10 lacks: {sorted(offending)}"
