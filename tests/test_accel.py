"""accel = auto | kvm | tcg -> the domain type, as the libvirt host that runs the nodes answers
(a fake libvirt here: its domain capabilities and host CPU, and the probe's verdict)."""

from types import SimpleNamespace

import libvirt
import pytest

from dali import accel
from dali.errors import DaliError
from support.files import local_files

CPU = "<capabilities><host><cpu><model>Broadwell</model>{features}</cpu></host></capabilities>"


def fake_virt(kvm: bool, features: str):
    """A libvirt host with or without /dev/kvm (its domain capabilities for kvm) and these CPU
    features in its capabilities."""
    def domcaps(*_):
        if not kvm:
            raise libvirt.libvirtError("KVM is not supported by '/usr/bin/qemu-system-x86_64'")
        return "<domainCapabilities/>"
    return SimpleNamespace(conn=SimpleNamespace(getDomainCapabilities=domcaps,
                                                getCapabilities=lambda: CPU.format(features=features)))


def decide(config, virt, setting):
    cluster = config._replace(accel=setting)
    return accel.decide(cluster, local_files(cluster), virt)


def test_tcg_and_kvm_mean_what_they_say(config, monkeypatch):
    monkeypatch.setattr(accel, "boots", lambda *a: pytest.fail("no probe: the setting decides"))
    virt = fake_virt(kvm=True, features="<feature name='vmx'/>")
    assert decide(config, virt, "tcg") == "qemu"
    assert decide(config, virt, "kvm") == "kvm"


def test_kvm_where_the_host_offers_none_is_refused(config, monkeypatch):
    monkeypatch.setattr(accel, "boots", lambda *a: pytest.fail("nothing to probe"))
    virt = fake_virt(kvm=False, features="<feature name='vmx'/>")
    with pytest.raises(DaliError, match="accel = kvm"):
        decide(config, virt, "kvm")
    assert decide(config, virt, "auto") == "qemu"


def test_auto_does_not_trust_dev_kvm_on_a_cpu_without_vmx_or_svm(config, monkeypatch):
    """Like this project's CI machines: /dev/kvm is there, the CPU has neither."""
    monkeypatch.setattr(accel, "boots", lambda *a: pytest.fail("no probe needed"))
    assert not accel.offers_kvm(fake_virt(kvm=True, features="<feature name='hypervisor'/>"))
    assert accel.offers_kvm(fake_virt(kvm=True, features="<feature name='svm'/>"))
    assert decide(config, fake_virt(kvm=True, features="<feature name='hypervisor'/>"), "auto") == "qemu"


def test_auto_believes_the_probe(config, monkeypatch):
    virt = fake_virt(kvm=True, features="<feature name='vmx'/>")
    for boots, expected in ((True, "kvm"), (False, "qemu")):
        monkeypatch.setattr(accel, "boots", lambda cluster, v, kernel, kind, boots=boots: boots)
        assert decide(config, virt, "auto") == expected


def test_the_probe_boots_the_image_kernel_where_the_nodes_run(config, monkeypatch):
    seen = []
    monkeypatch.setattr(accel, "boots", lambda cluster, v, kernel, kind: seen.append((kernel, kind)))
    decide(config, fake_virt(kvm=True, features="<feature name='vmx'/>"), "auto")
    assert seen == [(config.data_dir / "image" / "vmlinuz", "kvm")]
