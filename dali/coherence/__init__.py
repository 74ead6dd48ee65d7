"""The FAM as the hardware really is: not cache-coherent between nodes (docs/coherence.md).

A checked cluster's nodes run under a QEMU new enough for TCG plugins that read registers
(qemu.py fetches it from Debian's backports), each loading dali's plugin (plugin.py builds
c/*.c), all of them sharing one model of the FAM's cache lines (model.py); findings.py turns
what the plugins found into a report a developer can act on."""
