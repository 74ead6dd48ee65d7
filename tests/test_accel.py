"""accel = auto | kvm | tcg -> the domain type."""

from dataclasses import replace

import pytest

from tasks import accel, config
from tasks.errors import DaliError


def cluster(setting):
    c = config.load(env={})
    return replace(c, accel=setting)


def test_tcg_and_kvm_mean_what_they_say(monkeypatch):
    monkeypatch.setattr(accel.os.path, "exists", lambda p: True)
    assert accel.domain_type(cluster("tcg"), None) == "qemu"
    assert accel.domain_type(cluster("kvm"), None) == "kvm"


def test_kvm_without_dev_kvm_is_refused(monkeypatch):
    monkeypatch.setattr(accel.os.path, "exists", lambda p: False)
    with pytest.raises(DaliError, match="accel = kvm"):
        accel.domain_type(cluster("kvm"), None)
    assert accel.domain_type(cluster("auto"), None) == "qemu"


def test_auto_does_not_trust_dev_kvm_on_a_cpu_without_vmx_or_svm(monkeypatch, tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor : 0\nflags : fpu vme de pse hypervisor\n")
    assert not accel.cpu_has_virtualisation(cpuinfo)
    cpuinfo.write_text("processor : 0\nflags : fpu vmx hypervisor\n")
    assert accel.cpu_has_virtualisation(cpuinfo)
    monkeypatch.setattr(accel.os.path, "exists", lambda p: True)
    monkeypatch.setattr(accel, "cpu_has_virtualisation", lambda: False)
    monkeypatch.setattr(accel, "guest_boots", lambda *a: pytest.fail("no probe needed"))
    assert accel.domain_type(cluster("auto"), tmp_path / "vmlinuz") == "qemu"


def test_auto_probes_once_per_kernel(monkeypatch, tmp_path):
    c = config.load(env={})
    c = replace(c, accel="auto", state_dir=tmp_path / "state")
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"k")
    monkeypatch.setattr(accel.os.path, "exists", lambda p: True)
    monkeypatch.setattr(accel, "cpu_has_virtualisation", lambda: True)
    calls = []
    monkeypatch.setattr(accel, "guest_boots", lambda k, a: calls.append((k, a)) or True)
    assert accel.domain_type(c, kernel) == "kvm"
    assert accel.domain_type(c, kernel) == "kvm"
    assert len(calls) == 1
