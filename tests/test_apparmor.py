"""The AppArmor template edit, on a copy of libvirt's real template, checked by the real parser.

The cluster's FAM lives in a fresh directory, so a rule that a user's running cluster put in the
host's template (and so in the copy) is never mistaken for this test's."""

import shutil
import subprocess

import pytest

from dali import apparmor
from dali.errors import DaliError

LIBVIRT_TEMPLATE = "/etc/apparmor.d/libvirt/TEMPLATE.qemu"


@pytest.fixture
def config_copy(config_in, tmp_path):
    """The cluster, with libvirt's template copied to tmp_path."""
    template = tmp_path / "TEMPLATE.qemu"
    shutil.copy(LIBVIRT_TEMPLATE, template)
    return config_in._replace(apparmor_template=template)


def parses(path) -> bool:
    return subprocess.run(["apparmor_parser", "-Q", "-K", "--skip-cache", str(path)],
                          capture_output=True).returncode == 0


def test_rule_added_once_after_the_include_and_removed_exactly(config_copy):
    template = config_copy.apparmor_template
    pristine = template.read_text()
    assert not apparmor.has_rule(config_copy)
    apparmor.add_rule(config_copy)
    apparmor.add_rule(config_copy)  # idempotent
    lines = template.read_text().splitlines()
    rule = f'  "{config_copy.fam_path}" rw,  # dali cluster ivp: the shared NVDIMM backing file'
    assert lines.count(rule) == 1
    assert lines[lines.index(rule) - 1].strip() == apparmor.INCLUDE
    assert apparmor.has_rule(config_copy) and parses(template)
    assert (template.parent / "TEMPLATE.qemu.dali-backup").read_text() == pristine
    apparmor.remove_rule(config_copy)
    assert template.read_text() == pristine
    assert not (template.parent / "TEMPLATE.qemu.dali-backup").exists()


def test_a_broken_template_is_left_untouched(config_copy):
    template = config_copy.apparmor_template
    broken = template.read_text().replace("#include <abstractions/libvirt-qemu>",
                                          "#include <abstractions/libvirt-qemu>\n  /oops r")
    template.write_text(broken)
    with pytest.raises(DaliError, match="would not parse"):
        apparmor.add_rule(config_copy)
    assert template.read_text() == broken
    assert not list(template.parent.glob(".*dali-new"))


def test_absent_template_is_skipped(config_copy, tmp_path, capfd):
    gone = config_copy._replace(apparmor_template=tmp_path / "nope")
    apparmor.add_rule(gone)
    assert "skipped" in capfd.readouterr().err
    assert apparmor.has_rule(gone) is None
