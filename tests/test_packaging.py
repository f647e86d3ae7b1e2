"""The wheel: only ``poolwatch`` is importable from it, and it carries what it exports."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from poolwatch.exposition.assets import ASSETS

ROOT = Path(__file__).resolve().parent.parent
PIP = (sys.executable, "-m", "pip")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # hatchling is a pinned development dependency: no index needed here.
    subprocess.run(
        [*PIP, "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (found,) = out.glob("poolwatch-*.whl")
    return found


def test_the_only_top_level_package_is_poolwatch(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        tops = {name.split("/")[0] for name in archive.namelist()}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"poolwatch"}


def test_every_generated_file_is_in_the_wheel_and_in_the_asset_list(wheel: Path) -> None:
    generated = {
        "dashboards": {p.relative_to(ROOT / "dashboards").as_posix() for p in _files("dashboards")},
        "alerts": {p.name for p in (ROOT / "alerts").iterdir() if p.suffix in (".yml", ".md")},
    }
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        for kind, files in ASSETS.items():
            assert set(files) == generated[kind]
            for name in files:
                packed = archive.read(f"poolwatch/_assets/{kind}/{name}")
                assert packed == (ROOT / kind / name).read_bytes()
        assert not any(n.startswith(("alerts/", "dashboards/", "loadtests/")) for n in names)


@pytest.mark.parametrize("kind", sorted(ASSETS))
def test_export_from_an_installed_wheel(wheel: Path, tmp_path: Path, kind: str) -> None:
    site = tmp_path / "site"
    subprocess.run(
        [*PIP, "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
        check=True,
        capture_output=True,
    )
    target = tmp_path / "out"
    # The installed copy goes first on the path (the editable install is there too).
    code = (
        f"import sys; sys.path.insert(0, {str(site)!r}); import poolwatch; "
        "assert poolwatch.__file__.startswith(sys.path[0]), poolwatch.__file__; "
        "from poolwatch.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, "export", kind, str(target)],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    written = sorted(Path(line) for line in done.stdout.splitlines())
    assert written == sorted(target / name for name in ASSETS[kind])
    for name in ASSETS[kind]:
        assert (target / name).read_bytes() == (ROOT / kind / name).read_bytes()


def _files(directory: str) -> list[Path]:
    return [
        p
        for p in (ROOT / directory).rglob("*")
        if p.is_file() and p.suffix in (".json", ".yaml") and "__pycache__" not in p.parts
    ]
