"""Commands start at once: the CLI loads the heavy libraries (the database layer, templating, MJML, the web
server) only inside the commands that use them, so `newsletter --help` and every command's --help run
without them. The start-up times themselves are measured by `python -m bench.startup`."""

import json
import subprocess
import sys

# pydantic is not among them: typer itself loads it to read the options of the command it runs.
HEAVY = ("sqlalchemy", "sqlmodel", "alembic", "jinja2", "mjml", "css_inline", "fastapi", "uvicorn", "httpx",
         "feedparser", "email_validator", "babel", "apscheduler", "yaml", "trafilatura")

# Imports newsletter.cli, asks every command (and group) for its --help in this one process, and prints
# which heavy top-level packages got loaded.
EVERY_HELP = """
import json, sys
import typer
from typer.testing import CliRunner
from newsletter.cli import app

def paths(command, path):
    yield path
    for name, sub in getattr(command, "commands", {}).items():
        yield from paths(sub, [*path, name])

runner = CliRunner()
seen = []
for path in paths(typer.main.get_command(app), []):
    result = runner.invoke(app, [*path, "--help"], prog_name="newsletter")
    assert result.exit_code == 0 and "Usage: newsletter" in result.output, (path, result.output)
    seen.append(" ".join(path))
heavy = sorted({name.partition(".")[0] for name in sys.modules} & set(sys.argv[1:]))
print(json.dumps({"helped": seen, "heavy": heavy}))
"""


def test_importing_the_cli_loads_no_heavy_library():
    code = "import sys, newsletter.cli; print(' '.join(sorted({m.partition('.')[0] for m in sys.modules})))"
    loaded = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                timeout=120).stdout.split())
    assert "newsletter" in loaded
    assert loaded.isdisjoint(HEAVY), sorted(loaded & set(HEAVY))


def test_every_commands_help_shows_without_loading_a_heavy_library():
    result = subprocess.run([sys.executable, "-c", EVERY_HELP, *HEAVY], capture_output=True, text=True,
                            check=True, timeout=120)
    report = json.loads(result.stdout)
    assert {"", "ingest", "status", "summaries list", "digest render", "digest send", "subscribers import",
            "serve", "preview", "demo"} <= set(report["helped"])
    assert report["heavy"] == []
