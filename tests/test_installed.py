"""The package as a user gets it: a wheel, installed into a fresh venv, run from outside the checkout.

An editable install hides what a wheel leaves out (a fixture file read through `__file__`, a
module the package list misses), so this builds the wheel from a copy of the sources, installs it
with the network off (`--no-index --no-deps`), and lets the new venv see the dependencies of the
running environment through a `.pth` file instead of downloading them. The commands then run from
an empty folder, where nothing of the checkout can be found.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("pyproject.toml", "README.md", "setup.cfg", "downloader")
"""What building the wheel reads: the copy holds these and nothing else of the checkout."""


def _run(command: list, cwd: Path, env: dict, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([str(part) for part in command], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout)


def _dependency_folders() -> list[str]:
    """The running interpreter's site-packages folders: where requests, aiohttp, typer... are."""
    return [entry for entry in sys.path
            if Path(entry).name in ("site-packages", "dist-packages") and Path(entry).is_dir()]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    """A fresh venv with the wheel installed; returns its bin folder, a folder outside the checkout
    to run in, and the environment to run with."""
    work = tmp_path_factory.mktemp("installed")
    env = {name: value for name, value in os.environ.items() if name not in ("PYTHONPATH", "PYTHONHOME")}
    env["PIP_NO_INDEX"] = "1"

    source = work / "source"
    source.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, source / name)
    # no build isolation: the build backend (setuptools, from the test extra) is already here, so
    # nothing is downloaded
    built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-index", "--no-build-isolation",
                  "-w", work / "wheels", source], cwd=work, env=env)
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = (work / "wheels").glob("downloader-*.whl")

    fresh = work / "venv"
    venv.EnvBuilder(with_pip=False).create(fresh)
    python = fresh / "bin" / "python"
    # installed before the .pth exists, so pip sees only the fresh venv and touches nothing else
    install = _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-index", "--no-deps",
                    "--no-compile", wheel], cwd=work, env=env)
    assert install.returncode == 0, install.stdout + install.stderr
    purelib = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], work, env)
    Path(purelib.stdout.strip(), "running-environment.pth").write_text("\n".join(_dependency_folders()) + "\n")

    elsewhere = work / "elsewhere"
    elsewhere.mkdir()
    return {"bin": fresh / "bin", "cwd": elsewhere, "env": env}


def test_the_installed_package_is_the_wheel_not_the_checkout(installed: dict) -> None:
    found = _run([installed["bin"] / "python", "-c", "import downloader.demo as m, aiohttp; print(m.__file__)"],
                 installed["cwd"], installed["env"])
    assert found.returncode == 0, found.stderr
    assert Path(found.stdout.strip()).is_relative_to(installed["bin"].parent), found.stdout
    assert not Path(found.stdout.strip()).is_relative_to(ROOT)


def test_demo_runs_from_the_wheel_and_verifies_every_file(installed: dict) -> None:
    done = _run([installed["bin"] / "downloader", "demo", "--modes", "async", "--latency", "5ms", "--out", "d"],
                installed["cwd"], installed["env"])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "every file verified: yes" in done.stdout
    (row,) = [line.split() for line in done.stdout.splitlines() if line.startswith("async ")]
    assert row[-1] == "yes" and int(row[1]) > 50, done.stdout
    landed = installed["cwd"] / "d" / "async"
    assert (landed / "archives" / "archive-2026.tar").stat().st_size == 6_000_000
    assert (landed / "quarterly-report.pdf").is_file()


def test_get_help_runs_from_the_wheel(installed: dict) -> None:
    helped = _run([installed["bin"] / "downloader", "get", "--help"], installed["cwd"], installed["env"])
    assert helped.returncode == 0, helped.stderr
    assert "Usage:" in helped.stdout and "--input-file" in helped.stdout


def test_bench_without_urls_runs_from_the_wheel_with_libcurl_too(installed: dict) -> None:
    benched = _run([installed["bin"] / "downloader", "bench", "--modes", "async,curl", "--runs", "1", "--json",
                    "b.json"], installed["cwd"], installed["env"])
    assert benched.returncode == 0, benched.stdout + benched.stderr
    result = json.loads((installed["cwd"] / "b.json").read_text(encoding="utf-8"))
    assert "mock server" in result["source"]
    assert [row["name"] for row in result["rows"]] == ["async", "curl"]
    assert all(row["median"]["ok"] == result["urls"] > 0 for row in result["rows"])
    assert benched.stdout.count(f"{result['urls']}/{result['urls']}") == 2
    assert f"wrote JSON {installed['cwd'].resolve() / 'b.json'}" in benched.stdout.splitlines()
