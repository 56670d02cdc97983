"""Repository hygiene: the license ships in both archives and nothing points outside the repo.

ruff and mypy are not tests: ``make lint`` runs them, and ``make test`` runs ``make lint``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
# Spelled in two pieces so that this file does not match itself.
SHARED = ".." + "/shared"
# A relative path climbing out of its folder (two dots, a slash), not an ellipsis (".../v1").
CLIMB = re.compile(r"(?<![.\w])\.\./[\w./-]*")


def _tracked_files() -> list[Path]:
    git = shutil.which("git")
    listed = None
    if git is not None:
        found = subprocess.run([git, "ls-files", "-z"], cwd=ROOT, capture_output=True, check=False)
        listed = found.stdout if found.returncode == 0 else None
    if listed is None:
        pytest.skip("needs git and a checkout (an sdist has no git metadata)")
    return [ROOT / name for name in listed.decode().split("\0") if name]


def _text(path: Path) -> str | None:
    try:
        return path.read_text("utf-8")
    except (UnicodeDecodeError, IsADirectoryError, FileNotFoundError):
        return None  # binary (a plot) or deleted in the working tree


def test_license_is_apache_2_and_declared() -> None:
    text = (ROOT / "LICENSE").read_text("utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text  # the full text, not a pointer to it
    project = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["project"]
    assert project["license"] == "Apache-2.0"
    assert project["license-files"] == ["LICENSE"]


def test_wheel_and_sdist_carry_the_license(tmp_path: Path) -> None:
    pytest.importorskip("hatchling", reason="hatchling (the build backend) is in the dev extra")
    # The PEP 517 hooks pip and `python -m build` call, run offline from the checkout.
    script = (
        "import sys, hatchling.build as b; d = sys.argv[1]; "
        "print(b.build_wheel(d)); print(b.build_sdist(d))"
    )
    built = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    wheel_name, sdist_name = built.stdout.split()
    with zipfile.ZipFile(tmp_path / wheel_name) as wheel:
        names = wheel.namelist()
        metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
        assert wheel.read(metadata).decode().count("License-File: LICENSE") == 1
        license_file = next(n for n in names if n.endswith(".dist-info/licenses/LICENSE"))
        assert wheel.read(license_file) == (ROOT / "LICENSE").read_bytes()
    with tarfile.open(tmp_path / sdist_name) as sdist:
        top = sdist_name.removesuffix(".tar.gz")
        member = sdist.extractfile(f"{top}/LICENSE")
        assert member is not None and member.read() == (ROOT / "LICENSE").read_bytes()


def test_no_tracked_file_points_outside_the_repository() -> None:
    offenders = []
    for path in _tracked_files():
        text = _text(path)
        if text is None:
            continue
        rel = path.relative_to(ROOT)
        if SHARED in text:
            offenders.append(f"{rel}: mentions {SHARED}")
        for match in CLIMB.finditer(text):
            target = (path.parent / match.group()).resolve()
            if not target.is_relative_to(ROOT) or not target.exists():
                offenders.append(f"{rel}: {match.group()} is not a file in this repository")
    assert not offenders, "\n".join(offenders)
