"""Packaging: declared dependencies hold the tested pins, the package data ships, the project's folders are found
from anywhere, and the download commands refuse before they download."""

from __future__ import annotations

import ast
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from conftest import ROOT, run_cli
from unilogit.errors import ConfigError
from unilogit.paths import ROOT_ENV, data_dir, examples_dir, project_root, shipped

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
PACKAGE = ROOT / "src" / "unilogit"
# Imported by unilogit but not a dependency on purpose: torchaudio is stubbed where missing (see
# unilogit._compat), and deepspeed is the [deepspeed] extra.
NOT_DECLARED = {"torchaudio", "deepspeed"}


def _pins(path: Path) -> dict[str, str]:
    """``{canonical name: version}`` of a requirements file's ``name==version`` lines."""
    lines = [line.split("#")[0].strip() for line in path.read_text().splitlines()]
    pins = {}
    for line in filter(None, lines):
        req = Requirement(line)
        (spec,) = req.specifier
        assert spec.operator == "==", f"{path.name}: {line} is not an exact pin"
        pins[canonicalize_name(req.name)] = spec.version
    return pins


def _declared(requirements: list[str]) -> dict[str, Requirement]:
    return {canonicalize_name(req.name): req for req in map(Requirement, requirements)}


def test_declared_ranges_hold_the_tested_pins() -> None:
    runtime = _declared(PYPROJECT["dependencies"])
    extras = {name: _declared(reqs) for name, reqs in PYPROJECT["optional-dependencies"].items()}
    assert set(extras) >= {"deepspeed", "dev"}
    assert str(runtime["llamafactory"].specifier) == "==0.9.5"
    pins, dev_pins = _pins(ROOT / "requirements.txt"), _pins(ROOT / "requirements-dev.txt")
    for declared, tested in ((runtime, pins), (extras["deepspeed"], pins), (extras["dev"], dev_pins)):
        for name, req in declared.items():
            # Those the CPU recipe does not pin come with transformers: the version it resolved to is the tested one.
            version = tested.get(name) or metadata.version(name)
            assert req.specifier.contains(version), f"{req} leaves out the tested {name}=={version}"
    assert set(extras["dev"]) == set(dev_pins) == {"pytest", "pytest-xdist", "hypothesis", "ruff", "playwright"}
    assert not set(dev_pins) & set(pins), "the test tools are not runtime requirements"


def _third_party_imports() -> set[str]:
    """Top-level names of the modules that unilogit's source imports, less the standard library and itself."""
    names = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"unilogit", "__future__"}


def test_every_third_party_import_is_declared() -> None:
    distributions = metadata.packages_distributions()
    imported = {canonicalize_name(dist) for name in _third_party_imports() for dist in distributions.get(name, [name])}
    assert {"torch", "transformers", "llamafactory", "gradio", "deepspeed"} <= imported  # the walk sees imports
    missing = imported - set(_declared(PYPROJECT["dependencies"])) - NOT_DECLARED
    assert not missing, f"imported but not in pyproject's dependencies: {sorted(missing)}"


def test_every_data_file_of_the_package_ships() -> None:
    listed = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["unilogit"]
    assert all((PACKAGE / name).is_file() for name in listed), listed
    data_files = {
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*")
        if path.is_file() and path.suffix not in (".py", ".pyc")
    }
    assert data_files == set(listed), "list every data file under [tool.setuptools.package-data]"


def test_the_project_folders_are_found_from_any_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ROOT_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    # The editable install records this checkout; the working folder has no say.
    assert project_root() == ROOT
    assert data_dir() == ROOT / "data" and examples_dir() == ROOT / "examples"
    assert shipped("data/muse_mini") == str(ROOT / "data" / "muse_mini")
    (tmp_path / "data" / "muse_mini").mkdir(parents=True)
    assert shipped("data/muse_mini") == "data/muse_mini"  # the caller's own folder wins
    assert shipped("nowhere/at_all") == "nowhere/at_all"


def test_an_explicit_root_wins_and_a_bad_one_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "data").mkdir()
    monkeypatch.setenv(ROOT_ENV, str(tmp_path))
    assert project_root() == tmp_path.resolve() and data_dir() == tmp_path.resolve() / "data"
    with pytest.raises(ConfigError) as error:
        examples_dir()
    assert str(error.value) == (
        f"examples/ is not in {tmp_path.resolve()}; set {ROOT_ENV} to the unilogit checkout that holds examples/"
    )
    monkeypatch.setenv(ROOT_ENV, str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match=f"^{ROOT_ENV}=.*missing is not a folder; set it to"):
        project_root()


@pytest.mark.parametrize("command", [["rwku", "export"], ["muse", "export", "news"]])
def test_export_refuses_a_folder_with_files_before_it_downloads(command: list[str], tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("keep me")
    # HF_HUB_OFFLINE: were the refusal to come after the download, the command would fail on the hub instead.
    result = run_cli(*command, str(tmp_path), env={"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"unilogit: error: export folder {tmp_path} exists and is not empty: choose a new folder or empty it first"
    ]
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
