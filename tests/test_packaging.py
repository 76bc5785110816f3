"""The wheel carries the default templates and samples, so an installed copy works outside the checkout."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.conftest import ROOT


def test_wheel_ships_templates_and_samples_and_its_demo_runs_anywhere(tmp_path: Path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path / "dist"), str(ROOT)],
        check=True,
    )
    (wheel,) = (tmp_path / "dist").glob("newsletter-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        archive.extractall(tmp_path / "site")
    assert {
        "newsletter/templates/digest.mjml.j2",
        "newsletter/templates/digest.txt.j2",
        "newsletter/templates/subject.txt.j2",
        "newsletter/samples/subscribers.csv",
        "newsletter/migrations/versions/0001_initial_schema.py",
        "newsletter/web/templates/base.html",
        "newsletter/web/static/site.css",  # read when the web app is built: `newsletter serve` needs it
    } <= names
    assert any(name.startswith("newsletter/samples/summaries/") for name in names)

    # Run the installed code from a folder that is not the checkout: nothing may come from ROOT.
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    environment = {**os.environ, "PYTHONPATH": str(tmp_path / "site"), "NEWSLETTER_SECRET_KEY": "k"}
    result = subprocess.run(
        [sys.executable, "-m", "newsletter", "demo", "--dir", "demo"],
        cwd=workdir, env=environment, capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "sample message:" in result.stdout
    assert len(list((workdir / "demo" / "outbox").glob("*.eml"))) == 6
    probe = subprocess.run(
        [sys.executable, "-c", "import newsletter; print(newsletter.__file__)"],
        cwd=workdir, env=environment, capture_output=True, text=True, check=True,
    )
    assert probe.stdout.strip().startswith(str(tmp_path / "site"))
