"""The installable package: pyproject.toml's dependencies are requirements.txt's, the wheel ships
the configs and the `rltf` command, and every command answers `--help`."""

import re
import subprocess
import sys

import pytest

from conftest import REPO
from rltf_jax import cli

tomllib = pytest.importorskip("tomllib")


def _requirements() -> list[str]:
  lines = (REPO / "requirements.txt").read_text().splitlines()
  return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def test_pyproject_dependencies_are_requirements_txt():
  project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
  assert project["dependencies"] + project["optional-dependencies"]["test"] == _requirements()
  assert project["scripts"] == {"rltf": "rltf_jax.cli:main"}


def test_the_package_holds_the_configs_and_every_subpackage():
  """What `pip install .` ships (pyproject's `packages.find`): every folder of rltf_jax with an
  `__init__.py`, the configs and sweeps among them; none of the repository's own folders."""
  setuptools = pytest.importorskip("setuptools")
  found = set(setuptools.find_packages(str(REPO), include=["rltf_jax*"]))
  folders = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "rltf_jax").rglob("*.py")
             if "__pycache__" not in p.parts}
  assert folders == found
  assert {"rltf_jax.configs", "rltf_jax.configs.sweeps", "rltf_jax.reporting",
          "rltf_jax.commands"} <= found
  data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
  assert "*.json" in data["*"]  # rltf_jax/data/table4_cohorts.json


@pytest.mark.parametrize("command", [c for c in cli.COMMANDS if c != "run"])
def test_every_command_answers_help(command, capsys, monkeypatch):
  monkeypatch.setattr(sys, "argv", list(sys.argv))
  with pytest.raises(SystemExit) as e:
    cli.main([command, "--help"])
  assert e.value.code in (0, None)
  out = capsys.readouterr().out
  assert re.search(rf"usage: rltf {command}\b", out) or command in ("meds", "bench"), out[:300]


def test_run_help_lists_its_flags():
  """`rltf run --help` in a process of its own (absl's flags are the process's)."""
  out = subprocess.run([sys.executable, "-m", "rltf_jax.cli", "run", "--help"], cwd=REPO,
                       capture_output=True, text=True, timeout=120, check=True).stdout
  assert "--config" in out and "--workdir" in out and "packaged name" in out


def test_unknown_command_is_one_line_and_exit_2(capsys):
  with pytest.raises(SystemExit) as e:
    cli.main(["trian"])
  assert e.value.code == 2 and "unknown command 'trian'" in capsys.readouterr().err


# The `python -m` forms of the commands before `rltf`: deprecated, still working for this release.
DEPRECATED = ("rltf_jax.sweep", "rltf_jax.batch", "rltf_jax.synthesize", "rltf_jax.data.simulate",
              "rltf_jax.data.meds", "rltf_jax.bench", "rltf_jax.evaluation.report",
              "rltf_jax.evaluation.reproduction", "rltf_jax.evaluation.dataset_privacy",
              "rltf_jax.evaluation.utility")


@pytest.mark.slow  # one process per form: about a minute on 2 cores
@pytest.mark.parametrize("module", DEPRECATED)
def test_deprecated_python_m_forms_still_answer_help(module):
  proc = subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO, capture_output=True,
                        text=True, timeout=120)
  assert proc.returncode == 0 and "usage" in proc.stdout, proc.stderr[-500:]
