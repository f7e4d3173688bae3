"""`hovcaffe doctor`'s package list: present, missing (required or optional) and too old, each with
its fix."""
from __future__ import annotations

from importlib import metadata

from hovcaffe.environment import PACKAGES, Package, check_package, version_tuple


def test_version_tuple_keeps_the_numeric_release():
    assert version_tuple("2.13.0+cpu") == (2, 13, 0)
    assert version_tuple("26.0.1") == (26, 0, 1)
    assert version_tuple("1.26.4rc1") == (1, 26, 4)
    assert version_tuple("2.4") < version_tuple("2.13")


def test_present_package_reports_its_installed_version():
    check = check_package(Package("numpy", "numpy", "everything", "1.26"))
    assert check.ok and check.detail == metadata.version("numpy")


def test_too_old_required_package_fails_with_the_upgrade_command():
    check = check_package(Package("numpy", "numpy", "everything", "99.0"))
    assert not check.ok
    assert check.detail == f"{metadata.version('numpy')} is installed (needs >= 99.0); needed for everything"
    assert check.fix == "pip install 'numpy>=99.0'"


def test_missing_optional_package_is_listed_with_its_fix_but_does_not_fail():
    pkg = Package("no-such-dist-hovcaffe", "no_such_module", "a feature", None,
                  fix="pip install no-such-dist-hovcaffe", optional=True)
    check = check_package(pkg)
    assert check.ok
    assert check.detail == ("not installed; optional, for a feature. To add it: "
                            "pip install no-such-dist-hovcaffe")
    required = check_package(Package("no-such-dist-hovcaffe", "no_such_module", "a feature", "1.0"))
    assert not required.ok and required.fix == "pip install 'no-such-dist-hovcaffe>=1.0'"


def test_installed_but_unimportable_package_is_reported(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "numpy_blocked_for_test", None)
    check = check_package(Package("numpy", "numpy_blocked_for_test", "x", None))
    assert not check.ok and "does not import: ModuleNotFoundError" in check.detail


def test_every_runtime_requirement_is_checked():
    """Each line of requirements/runtime.txt has a doctor entry (torch is doctor's own check)."""
    from conftest import REPO

    lines = [line.split("#")[0].strip() for line in (REPO / "requirements" / "runtime.txt").read_text().splitlines()]
    names = {line.split(">")[0].split("=")[0].split("<")[0].split("[")[0] for line in lines if line}
    assert names - {p.dist for p in PACKAGES if not p.optional} == {"torch"}
