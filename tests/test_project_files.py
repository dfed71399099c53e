"""The files a project ships: license, changelog, citation, and its own design document cited."""

import re
from pathlib import Path

import pytest
import yaml

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parents[1]


def test_license_is_the_apache_2_text_that_pyproject_declares():
    text = (ROOT / "LICENSE").read_text()
    assert text.lstrip().startswith("Apache License") and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text and len(text.splitlines()) > 190
    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"]["text"] == "Apache-2.0"


def test_changelog_has_the_packaged_version():
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert f"## [{version}]" in (ROOT / "CHANGELOG.md").read_text()


def test_citation_cites_the_software_and_the_study():
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert citation["cff-version"] and citation["type"] == "software" and citation["authors"]
    assert citation["version"] == tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    (study,) = citation["references"]
    assert study["identifiers"][0]["value"] == "arXiv:2602.04663" and study["authors"]


def test_code_and_docs_cite_only_documents_that_ship():
    """docs/design.md replaced a design file outside the repository: no citation of it may come back."""
    files = [p for p in ROOT.rglob("*") if p.suffix in (".py", ".md", ".cpp", ".h", ".cu", ".cff")
             and not any(part.startswith(".") or part in ("build", "outputs") for part in p.relative_to(ROOT).parts)]
    offenders = [str(p.relative_to(ROOT)) for p in files if "DESIGN.md" in p.read_text(errors="replace")
                 and p.name != "test_project_files.py"]
    assert offenders == []
    assert (ROOT / "docs" / "design.md").is_file()


def test_readme_links_point_at_files_in_the_repository():
    readme = (ROOT / "README.md").read_text()
    targets = re.findall(r"\]\(((?!https?://)[^)#]+)\)", readme)
    assert targets, "no relative links found"
    missing = [t for t in targets if not (ROOT / t).exists()]
    assert missing == []
