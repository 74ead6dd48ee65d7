"""accel = auto | kvm | tcg -> the domain type."""

import pytest

from dali import accel
from dali.errors import DaliError


def test_tcg_and_kvm_mean_what_they_say(monkeypatch):
    monkeypatch.setattr(accel.os.path, "exists", lambda p: True)
    assert accel.domain_type("tcg", None) == "qemu"
    assert accel.domain_type("kvm", None) == "kvm"


def test_kvm_without_dev_kvm_is_refused(monkeypatch):
    monkeypatch.setattr(accel.os.path, "exists", lambda p: False)
    with pytest.raises(DaliError, match="accel = kvm"):
        accel.domain_type("kvm", None)
    assert accel.domain_type("auto", None) == "qemu"


def test_auto_does_not_trust_dev_kvm_on_a_cpu_without_vmx_or_svm(monkeypatch, tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor : 0\nflags : fpu vme de pse hypervisor\n")
    assert not accel.cpu_has_virtualisation(cpuinfo)
    cpuinfo.write_text("processor : 0\nflags : fpu vmx hypervisor\n")
    assert accel.cpu_has_virtualisation(cpuinfo)
    monkeypatch.setattr(accel.os.path, "exists", lambda p: True)
    monkeypatch.setattr(accel, "cpu_has_virtualisation", lambda: False)
    monkeypatch.setattr(accel, "guest_boots", lambda *a: pytest.fail("no probe needed"))
    assert accel.domain_type("auto", tmp_path / "vmlinuz") == "qemu"


def test_auto_believes_the_probe(monkeypatch, tmp_path):
    monkeypatch.setattr(accel.os.path, "exists", lambda p: True)
    monkeypatch.setattr(accel, "cpu_has_virtualisation", lambda: True)
    for boots, expected in ((True, "kvm"), (False, "qemu")):
        monkeypatch.setattr(accel, "guest_boots", lambda kernel, a, boots=boots: boots)
        assert accel.domain_type("auto", tmp_path / "vmlinuz") == expected
