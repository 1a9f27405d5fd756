"""envs/lmrepro.yaml mirrors pyproject.toml, so conda users get the same packages as pip users."""

import re
import tomllib

import yaml
from helpers import REPO


def _names(requirements):
    return {re.split(r"[<>=!\[ ]", r, maxsplit=1)[0].lower().replace("_", "-") for r in requirements}


def test_conda_env_mirrors_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = _names(project["dependencies"] + project["optional-dependencies"]["eval"])
    env = yaml.safe_load((REPO / "envs" / "lmrepro.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert _names(pip) == wanted
