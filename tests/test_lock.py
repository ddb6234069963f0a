"""The environment under test is the one requirements.lock describes.

A suite that passed on an environment left over from an earlier install says nothing about a
fresh one: `make install` installs with the lock as constraints, and this test checks that every
locked package that is installed has the locked version (under CI, where the venv is always
fresh, a difference fails; on a user's own environment it only skips with the list).
"""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

import pytest

from tests.conftest import REPO, skip_unless_ci

PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([^\s;#]+)")


def locked_versions() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        if match := PIN.match(line):
            pins[metadata_name(match[1])] = match[2]
    return pins


def metadata_name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_versions() -> dict[str, str]:
    """Name -> version of what pip installed, as the first entry of ``sys.path`` that has it.

    Copies vendored inside other packages are not installations: setuptools puts its
    ``_vendor`` folder (with e.g. its own ``packaging-*.dist-info``) on ``sys.path`` once it is
    imported, which DeepSpeed's op builder does, so the order of tests must not matter.
    """
    installed: dict[str, str] = {}
    for dist in metadata.distributions():
        if "_vendor" in Path(str(dist.locate_file(""))).parts:
            continue
        installed.setdefault(metadata_name(dist.metadata["Name"]), dist.version)
    return installed


def test_vendored_copies_do_not_count(monkeypatch) -> None:
    import setuptools

    vendor = Path(setuptools.__file__).parent / "_vendor"
    if not list(vendor.glob("*.dist-info")):
        pytest.skip(f"no vendored distributions in {vendor}")
    before = installed_versions()
    for path in ([*sys.path, str(vendor)], [str(vendor), *sys.path]):  # last (setuptools), first
        monkeypatch.setattr(sys, "path", path)
        assert installed_versions() == before


def test_lock_pins_the_core_dependencies() -> None:
    pins = locked_versions()
    for name in ("torch", "deepspeed", "mosaicml-streaming", "transformers", "submitit"):
        assert name in pins, f"requirements.lock does not pin {name}"


def test_installed_versions_equal_the_lock() -> None:
    pins = locked_versions()
    installed = installed_versions()
    differ = [
        f"{name} {installed[name]} (locked {version})"
        for name, version in sorted(pins.items())
        if name in installed and installed[name] != version
    ]
    if differ:
        skip_unless_ci("installed versions differ from requirements.lock: " + ", ".join(differ))
