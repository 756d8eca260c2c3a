"""The documentation site builds, offline, with every public name in its reference.

Builds the site with ``mkdocs build --strict`` into a temporary folder (as
``.ci/run`` does), then checks the generated API reference and that no page loads a
script, style sheet or font from outside the site.
"""

from __future__ import annotations

import importlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mkdocs")
pytest.importorskip("mkdocstrings")
pytest.importorskip("mkdocs_gen_files")

ROOT = Path(__file__).resolve().parents[2]
# package -> page of the built reference that documents its __all__
PACKAGES = {
    "pynsm": "reference/index.html",
    "pynsm.losses": "reference/losses/index.html",
    "pynsm.train": "reference/train/index.html",
}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1", DISABLE_MKDOCS_2_WARNING="true")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    shutil.rmtree(ROOT / ".cache" / "mkdocs-jupyter", ignore_errors=True)
    return out


@pytest.mark.parametrize("package", list(PACKAGES))
def test_every_exported_name_has_its_own_entry(site: Path, package: str) -> None:
    sys.path.insert(0, str(ROOT))
    try:
        module = importlib.import_module(package)
    finally:
        sys.path.remove(str(ROOT))
    html = (site / PACKAGES[package]).read_text(encoding="utf-8")
    ids = set(re.findall(r'id="([^"]+)"', html))
    missing = [name for name in module.__all__ if f"{package}.{name}" not in ids]
    assert not missing, f"{package}: no reference entry for {missing}"


def test_every_public_module_has_a_page(site: Path) -> None:
    for path in sorted((ROOT / "pynsm").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            page = Path("reference", *parts[1:-1], "index.html")
        else:
            page = Path("reference", *parts[1:], "index.html")
        if any(part.startswith("_") for part in parts if part != "__init__"):
            continue
        assert (site / page).exists(), f"no reference page for {'.'.join(parts)}"


def test_the_site_loads_nothing_from_outside(site: Path) -> None:
    external = re.compile(
        r'<(?:script|link|img|iframe)\b[^>]*\b(?:src|href)="(?:https?:)?//[^"]*"'
    )
    css_import = re.compile(r"@import\s+url\(\s*['\"]?(?:https?:)?//")
    offenders = []
    for page in site.rglob("*.html"):
        offenders += [(page.name, m) for m in external.findall(page.read_text("utf-8"))]
    for sheet in site.rglob("*.css"):
        if css_import.search(sheet.read_text("utf-8")):
            offenders.append((sheet.name, "@import of an outside style sheet"))
    assert not offenders, offenders[:10]


def test_math_is_rendered_by_the_bundled_katex(site: Path) -> None:
    page = (site / "background" / "similarity-matching" / "index.html").read_text(
        "utf-8"
    )
    assert 'class="arithmatex"' in page
    assert "assets/katex/katex.min.js" in page
    assert (site / "assets" / "katex" / "fonts" / "KaTeX_Main-Regular.woff2").exists()
