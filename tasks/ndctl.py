"""ndctl inside a guest, through the guest agent: list the NVDIMM namespace, reconfigure it."""

from __future__ import annotations

import json
import time

from tasks.errors import DaliError
from tasks.virt import Libvirt

NAMESPACE = "namespace0.0"


def _json(text: str):
    text = text.strip()
    return json.loads(text) if text else []


def namespace(virt: Libvirt, dom, wait: int = 120) -> dict:
    """namespace0.0 as `ndctl list` reports it. The agent can answer before udev has loaded
    the NVDIMM modules, so an absent namespace is retried for `wait` seconds."""
    deadline = time.monotonic() + wait
    while True:
        listed = _json(virt.run(dom, ["ndctl", "list"]).check("ndctl list").stdout)
        listed = [listed] if isinstance(listed, dict) else listed
        for ns in listed:
            if ns.get("dev") == NAMESPACE:
                return ns
        if time.monotonic() > deadline:
            raise DaliError(f"{dom.name()}: ndctl list shows no {NAMESPACE} after {wait} s: "
                            f"check the domain's qemu:commandline (-M nvdimm=on, -device nvdimm)")
        time.sleep(2)


def reconfigure_fsdax(virt: Libvirt, dom) -> dict:
    """The seed's step 4: put namespace0.0 in fsdax mode. Returns ndctl's JSON."""
    result = virt.run(dom, ["ndctl", "create-namespace", f"--reconfig={NAMESPACE}",
                            "--mode=fsdax", "--force"], timeout=300)
    result.check("ndctl create-namespace --mode=fsdax")
    return _json(result.stdout)
