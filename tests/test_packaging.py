"""The project's own files agree with each other: what a newcomer reads is what runs."""
import re
import tomllib
from pathlib import Path

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
