"""The package stands on its own: the library imports nothing from configs/, data_pipelines/ or tools/;
the distribution installs the library, configs and data pipelines and imports from outside the checkout;
every tool answers --help against the installed copy; pinned requirements satisfy the declared ranges."""

import ast
import os
import pathlib
import shutil
import subprocess
import sys
import tomllib

import pytest
from packaging.requirements import Requirement

ROOT = pathlib.Path(__file__).resolve().parents[1]
OUTSIDE_LIBRARY = ("configs", "data_pipelines", "tools")


def _imported_modules(path: pathlib.Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module


def test_library_imports_nothing_outside_itself():
    offending = [f"{path.relative_to(ROOT)}:{line} imports {name}"
                 for path in sorted((ROOT / "flow3r_jax").rglob("*.py"))
                 for line, name in _imported_modules(path) if name.split(".")[0] in OUTSIDE_LIBRARY]
    assert not offending, "\n".join(offending)
    assert sum(1 for _ in (ROOT / "flow3r_jax").rglob("*.py")) > 50   # the walk did see the library


def test_the_import_walk_catches_an_outward_import(tmp_path):
    module = tmp_path / "bad.py"
    module.write_text("import os\nfrom configs.common import get_base_config\n")
    assert [name for _, name in _imported_modules(module) if name.split(".")[0] in OUTSIDE_LIBRARY] == \
        ["configs.common"]


def test_tools_do_not_edit_sys_path():
    for tool in sorted((ROOT / "tools").glob("*.py")):
        assert "sys.path" not in tool.read_text(), tool.name


def test_pinned_requirements_satisfy_the_declared_ranges():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]]
    pins = {}
    for name in ("requirements.txt", "requirements-dev.txt"):
        for line in (ROOT / name).read_text().splitlines():
            line = line.split("#")[0].strip()
            if line and not line.startswith("-"):
                requirement = Requirement(line)
                pins[requirement.name.lower()] = next(iter(requirement.specifier)).version
    for requirement in declared:
        assert requirement.name.lower() in pins, f"{requirement.name} is declared but not pinned"
        assert requirement.specifier.contains(pins[requirement.name.lower()]), \
            f"pinned {requirement.name}=={pins[requirement.name.lower()]} is outside {requirement.specifier}"


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The wheel of this checkout installed (without dependencies) into a fresh folder. It is built from a
    copy of the sources, so the build leaves nothing in the checkout."""
    source, wheels, target = (tmp_path_factory.mktemp(name) for name in ("source", "wheel", "site"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for package in ("flow3r_jax", "configs", "data_pipelines"):
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(wheels), str(source)], check=True, capture_output=True)
    wheel = next(wheels.glob("flow3r_jax-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    return target


def _run_outside(installed, tmp_path, *args):
    """Runs python from an empty folder with the installed copy and the third-party packages importable.

    -S skips site-packages' start-up hooks, so an editable install of this checkout cannot shadow the wheel.
    """
    import site

    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(installed), *site.getsitepackages()])}
    return subprocess.run([sys.executable, "-S", *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)


def test_installed_package_imports_from_outside_the_checkout(installed, tmp_path):
    result = _run_outside(installed, tmp_path, "-c",
                          "import configs.flow3r_tiny, data_pipelines.beam_pipeline, flow3r_jax.train.loop, "
                          "flow3r_jax.data.synthetic_dataset as s; print(s.__file__); "
                          "print(configs.flow3r_tiny.get_config().model.flow_head.type)")
    assert result.returncode == 0, result.stderr[-3000:]
    location, flow_head = result.stdout.split()
    assert location.startswith(str(installed)) and flow_head == "factored"


@pytest.mark.parametrize("tool", sorted(p.stem for p in (ROOT / "tools").glob("*.py")))
def test_every_tool_answers_help_against_the_installed_package(installed, tmp_path, tool):
    path = ROOT / "tools" / f"{tool}.py"
    result = _run_outside(installed, tmp_path, str(path), "--help")
    output = result.stdout + result.stderr
    # absl prints the tool's docstring and flags for --help and exits with status 1 (argparse: 0).
    assert result.returncode in (0, 1) and "Traceback" not in output, output[-3000:]
    first_line = ast.get_docstring(ast.parse(path.read_text())).splitlines()[0]
    assert first_line[:40] in output and "--" in output
