"""Loading cluster.toml and the seed's environment variables; every validation error; the
README table and cluster.toml, both generated from the one declaration."""

import re
import textwrap
import uuid
from pathlib import Path

import pytest

from dali import settings
from dali.cluster import REPO
from dali.settings import ConfigError, load


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "cluster.toml"
    p.write_text(textwrap.dedent(text))
    return p


def test_defaults_are_the_seeds(config):
    c = config
    assert (c.tag, c.original, c.clones) == ("ivp", "a", ("b", "c"))
    assert [n.name for n in c.nodes] == ["ivpa", "ivpb", "ivpc"]
    assert c.network.name == "ivp" and c.network.forward == "nat"
    # No addresses: dali picks a free subnet when it first defines the network (the seed's
    # 192.168.7.0/24 if free), and libvirt keeps it (tests/test_network.py).
    assert (c.network.address, c.network.prefix, c.network.dhcp_start) == (None, 24, None)
    assert c.fam_size == 1 << 30 and c.memory == 1 << 30 and c.max_memory == 2 << 30
    assert c.memory_slots == 2 and c.vcpus == 1
    assert c.fam_path == Path("/var/lib/dali/ivp/FAM")
    assert c.state_dir == REPO / "state" / "ivp"


def test_seed_environment_overrides_the_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    c = load(env={"DALI_DIR": "IVSHPMEM", "DALI_TAG": "mdc", "DALI_ORIGINAL": "x",
                  "DALI_CLONES": "y z w", "DALI_NETWORK": "mdcnet", "DALI_MEM_GB": "2",
                  "DALI_VCPUS": "2", "LIBVIRT_DEFAULT_URI": "test:///default"})
    assert c.data_dir == tmp_path / "IVSHPMEM"  # relative to the shell, as the seed uses it
    assert [n.name for n in c.nodes] == ["mdcx", "mdcy", "mdcz", "mdcw"]
    assert c.network.name == "mdcnet" and c.memory == 2 << 30 and c.vcpus == 2
    assert load(env={"DALI_TAG": "zt"}).network.name == "zt"  # the network follows the tag
    assert c.uri == "test:///default"
    assert c.state_dir.name == "mdc"


def test_empty_dali_clones_means_no_clones():
    assert load(env={"DALI_CLONES": ""}).clones == ()


def test_another_file(tmp_path):
    p = write(tmp_path, """
        tag = "t1"
        clones = []
        dir = "data"
        [network]
        forward = "none"
    """)
    c = load(p, env={})
    assert c.tag == "t1" and c.clones == () and c.network.forward == "none"
    assert c.data_dir == tmp_path / "data"  # relative to the file


def test_identities_are_distinct_and_stable():
    a = load(env={}).nodes
    b = load(env={}).nodes
    assert [n.mac for n in a] == [n.mac for n in b]
    for attr in ("mac", "uuid", "machine_id"):
        values = [getattr(n, attr) for n in a]
        assert len(set(values)) == len(values)
    assert all(n.mac.startswith("52:54:00:") for n in a)
    assert all(len(n.machine_id) == 32 for n in a)


def test_identities_are_the_uuid5_they_always_were():
    """dali derives its UUIDs without the uuid module (dali/cluster.py says why); an existing
    cluster's domains, network and marks must keep their identities all the same."""
    namespace = uuid.UUID("6f1d1c3e-8a52-4c55-9a55-2f0d1a7c0b11")
    c = load(env={})
    for node in c.nodes:
        assert node.uuid == str(uuid.uuid5(namespace, f"domain:{node.name}"))
        assert node.machine_id == uuid.uuid5(namespace, f"machine-id:{node.name}").hex
        assert node.mac[9:] == uuid.uuid5(namespace, f"mac:{node.name}").bytes[:3].hex(":")
    assert c.id == str(uuid.uuid5(namespace, f"cluster:{c.state_dir}\0{c.data_dir}"))
    assert c.network_uuid == str(uuid.uuid5(namespace, f"network:{c.id}:{c.network.name}"))


# Every refusal of a bad setting: (cluster file, environment, words its one line must hold).
# test_refusals.py gives each to a real doit too, and checks that nothing was made.
BAD_VALUES = [
    ('tag = "IVP"', {}, ["tag", "lowercase"]),
    ('original = "A"', {}, ["original", "suffix"]),
    ('clones = ["b", "b"]', {}, ["clones", "twice"]),
    ('clones = ["a"]', {}, ["clones", "original"]),
    ('clones = "b c"', {}, ["clones", "list"]),
    ('clones = ["b", 3]', {}, ["clones", "3"]),
    ('dir = 5', {}, ["dir", "path"]),
    ('tag = 5', {}, ["tag", "lowercase"]),
    ('accel = "xen"', {}, ["accel", "auto, kvm, tcg"]),
    ('[network]\nforward = "bridge"', {}, ["network.forward", "nat, none"]),
    ('[network]\naddress = "192.168.7.254"\ndhcp_start = "10.0.0.1"', {}, ["network.dhcp_start", "192.168.7.0/24"]),
    ('[network]\naddress = "192.168.7.254"\ndhcp_start = "192.168.7.30"\ndhcp_end = "192.168.7.20"',
     {}, ["dhcp_start", "after"]),
    ('[network]\naddress = "192.168.7.5"\ndhcp_start = "192.168.7.1"\ndhcp_end = "192.168.7.20"',
     {}, ["network.address", "DHCP range"]),
    ('[network]\naddress = "192.168.7.255"', {}, ["network.address", "broadcast address"]),
    ('[network]\naddress = "192.168.7.0"', {}, ["network.address", "network address"]),
    ('[network]\ndhcp_start = "192.168.7.1"', {}, ["network.dhcp_start", "network.address too"]),
    ('clones = ' + str([f"n{i}" for i in range(30)]).replace("'", '"') +
     '\n[network]\naddress = "192.168.7.254"\ndhcp_start = "192.168.7.1"\ndhcp_end = "192.168.7.20"',
     {}, ["network.dhcp_end", "20 addresses for 31 nodes"]),
    ('clones = ["b", "c", "d", "e", "f"]\n[network]\nprefix = 29', {}, ["network.prefix", "5 addresses for 6"]),
    ('', {"DALI_DIR": "/srv/a{b}"}, ["DALI_DIR", "'{'", "AppArmor"]),
    ('', {"DALI_DIR": "/srv/a,b"}, ["DALI_DIR", "','"]),
    ('[network]\naddress = "nope"', {}, ["network.address", "IPv4"]),
    ('[network]\nprefix = 31', {}, ["network.prefix", "<= 30"]),
    ('[fam]\nsize = "lots"', {}, ["fam.size", "not a size"]),
    ('[fam]\nsize = "1000000"', {}, ["fam.size", "multiple of 2M"]),
    ('[fam]\nsize = "2G"\n[node]\nmax_memory = "2G"', {}, ["node.max_memory", "at least"]),
    ('[node]\nvcpus = 0', {}, ["node.vcpus", ">= 1"]),
    ('[node]\nmemory = "100M"', {}, ["node.memory", "256M"]),
    ('[clone]\nmode = "deep"', {}, ["clone.mode", "linked, copy"]),
    ('[image]\npath = "/nonexistent.qcow2"', {}, ["image.path", "does not exist"]),
    ('[image]\nmirror = "deb.debian.org"', {}, ["image.mirror", "URL"]),
    ('[image]\nmirror = 7', {}, ["image.mirror", "URL"]),
    ('[image]\nextra_packages = ["Vim"]', {}, ["image.extra_packages", "'Vim'", "package name"]),
    ('[image]\nextra_packages = ["--no-check-gpg"]', {}, ["image.extra_packages", "package name"]),
    ('[image]\ndisk_size = "1G"', {}, ["image.disk_size", "2G"]),
    ('[apparmor]\ntemplate = "TEMPLATE.qemu"', {}, ["apparmor.template", "absolute"]),
    ('[timeouts]\nboot = -1', {}, ["timeouts.boot", ">= 1"]),
    ('[netwrok]\nname = "x"', {}, ["unknown setting", "netwrok"]),
    ('[node]\nram = "1G"', {}, ["unknown setting", "node.ram"]),
    ('tag = ', {}, ["not valid TOML"]),
    ('', {"DALI_VCPUS": "two"}, ["DALI_VCPUS", "node.vcpus", "whole number"]),
    ('', {"DALI_MEM_GB": "x"}, ["DALI_MEM_GB", "node.memory"]),
    ('', {"DALI_TAG": "Bad Tag"}, ["DALI_TAG", "tag"]),
    ('', {"DALI_CLONES": "b B"}, ["DALI_CLONES", "suffix"]),
    # What a careless or hostile cluster file could ask for (docs/reliability.md has the table).
    ('[[share]]\nsource = "/"\ntarget = "/mnt/host"', {}, ["share", "source '/'", "system directory"]),
    ('[[share]]\nsource = "/var/lib"\ntarget = "/mnt/host"', {}, ["share", "system directory"]),
    ('[[share]]\nsource = "/proc/self"\ntarget = "/mnt/host"', {}, ["share", "system directory"]),
    ('[[share]]\nsource = "/var"\ntarget = "/etc"', {}, ["share", "target '/etc'", "node's own system"]),
    ('[[share]]\nsource = "/var/tmp"\ntarget = "/"', {}, ["share", "target '/'"]),
    ('[[share]]\nsource = "/var/tmp"\ntarget = "/proc/x"', {}, ["share", "target '/proc/x'"]),
    ('[[share]]\nsource = "/var/tmp"\ntarget = "/a b"', {}, ["share", "not a plain absolute path"]),
    ('[[share]]\nsource = "/var/tmp"\ntarget = "/data/../etc"', {}, ["share", "write it as '/etc'"]),
    ('[[share]]\nsource = "/usr/share/doc"\ntarget = "/data"\n[fs]\ntype = "ocfs2"', {},
     ["share", "fs.mountpoint /data"]),
    ('[fs]\nmountpoint = "/da ta"', {}, ["fs.mountpoint", "fstab splits at a space"]),
    ('[fs]\nmountpoint = "/data;reboot"', {}, ["fs.mountpoint", "not a plain absolute path"]),
    ('[fs]\nmountpoint = "/usr"', {}, ["fs.mountpoint", "node's own system"]),
    ('[apparmor]\ntemplate = "/etc/passwd"', {}, ["apparmor.template", "under /etc/apparmor.d/"]),
    ('[apparmor]\ntemplate = "/etc/apparmor.d/../passwd"', {}, ["apparmor.template", "under /etc/apparmor.d/"]),
    ('[network]\naddress = "8.8.8.254"', {}, ["network.address", "not a private subnet"]),
    ('[network]\naddress = "127.0.0.254"', {}, ["network.address", "not a private subnet"]),
    ('[network]\naddress = "224.0.0.254"', {}, ["network.address", "not a private subnet"]),
    ('[network]\naddress = "10.1.2.3"\nprefix = 7', {}, ["network.prefix", ">= 8"]),
    ('dir = "/srv/a\\rb"', {}, ["dir", "'\\r'", "line-break"]),
    ('dir = "/srv/a\\u2028b"', {}, ["dir", "'\\u2028'"]),
    ('dir = "/srv/a\\tb"', {}, ["dir", "'\\t'"]),
    ('', {"DALI_DIR": "/srv/a\udcffb"}, ["DALI_DIR", "non-UTF-8"]),
    ('dir = "~nosuchuser/x"', {}, ["dir", "home directory"]),
    ('dir = "/srv/' + "x" * 300 + '"', {}, ["dir", "255 bytes"]),
    ('dir = "/etc"', {}, ["dir", "system directory"]),
    ('dir = "/usr/local/dali"', {}, ["dir", "system directory"]),
    ('dir = "/"', {}, ["dir", "system directory"]),
    ('dir = ""', {}, ["dir", "is empty"]),
    # XML's markup in a path: escaped on its way into libvirt's XML, and refused here all the same
    ('dir = "/srv/a\'b"', {}, ["dir", "XML", "markup"]),
    ('dir = "/srv/x</path><path>/etc"', {}, ["dir", "'<'", "markup"]),
    ('', {"DALI_DIR": "/srv/a&b"}, ["DALI_DIR", "'&'"]),
    ('[image]\npath = "/srv/own<image>.qcow2"', {}, ["image.path", "markup"]),
    ('[kernel]\npath = "/srv/linux\'s/bzImage"\nmodules = "/srv"', {}, ["kernel.path", "markup"]),
    ('', {"DALI_DIR": "/proc/dali"}, ["DALI_DIR", "system directory"]),
    ('[node]\nvcpus = "' + "9" * 5000 + '"', {}, ["node.vcpus", "(5002 characters)", "whole number"]),
    ('[node]\nvcpus = ' + "9" * 5000, {}, ["not valid TOML", "4300 digits"]),
    ('[fam]\nsize = "' + "9" * 5000 + '"', {}, ["fam.size", "not a size"]),
    ('[fam]\nsize = ' + str(1 << 62), {}, ["fam.size", "not a size"]),
    ('uri = "qemu+ext:///system?command=/bin/sh"', {}, ["uri", "transports unix, ssh", "not ext"]),
    # A remote libvirt: what needs this machine's files, or a host file dali would edit there
    ('uri = "qemu+ssh://root@lab/system"', {}, ["device.style", "AppArmor", "native"]),
    ('[device]\nstyle = "native"\n[debug]\ngdb = true', {"LIBVIRT_DEFAULT_URI": "qemu+tls://lab.example/system"},
     ["debug.gdb", "remote uri"]),
    ('uri = "qemu+ssh://lab/system"\ndir = "data"\n[device]\nstyle = "native"', {},
     ["dir", "relative", "absolute path there"]),
    ('uri = "qemu+ssh://lab/system"\n[device]\nstyle = "native"\n[[share]]\nsource = "/usr/share/doc"\ntarget = "/mnt/src"',
     {}, ["share", "remove the [[share]]"]),
    ('[remote]\nnetns = "dali"', {}, ["remote.netns", "another host"]),
    ('uri = "qemu+ssh://lab/system"\n[remote]\nnetns = "a b"', {}, ["remote.netns", "namespace"]),
    ('uri = "qemu:///system\\n"', {}, ["uri"]),
    # A uri that would run a program, here as root or on the libvirt host (libvirt runs command=
    # as it connects, dali copied it into ssh_config), or that libvirt, dali and ssh would read
    # differently: refused before libvirt is asked anything.
    ('uri = "qemu+ssh://lab/system?command=/bin/sh"', {}, ["uri", "command=", "remove it"]),
    ('uri = "qemu+tls://lab/system?command=/bin/sh"', {}, ["uri", "command=", "remove it"]),
    ('', {"LIBVIRT_DEFAULT_URI": "qemu+ssh://lab/system?command=/bin/sh"}, ["LIBVIRT_DEFAULT_URI", "uri", "command="]),
    ('uri = "qemu+ssh://lab/system?comm%61nd=/bin/sh"', {}, ["uri", "command=", "remove it"]),
    ('uri = "qemu+ssh://lab/system?keyfile=/k;command=/bin/sh"', {}, ["uri", "';'", "'&'"]),
    ('uri = "qemu+ssh://lab/system?netcat=/tmp/nc"', {}, ["uri", "netcat=", "remove it"]),
    ('uri = "qemu+ssh://lab/system?proxy=netcat"', {}, ["uri", "proxy=", "remove it"]),
    ('uri = "qemu+ssh://lab/system?name=qemu%2Bext:///system"', {}, ["uri", "name=", "remove it"]),
    ('uri = "qemu+ssh://lab/system?foo=1"', {}, ["uri", "'foo'", "keyfile, no_verify"]),
    ('uri = "qemu+tls://lab/system?keyfile=/k"', {}, ["uri", "keyfile=", "not tls"]),
    ('uri = "qemu+ssh://lab/system?keyfile=/a&keyfile=/b"', {}, ["uri", "keyfile=", "twice"]),
    ('uri = "qemu+ssh://lab/system?keyfile=k"', {}, ["uri", "keyfile=", "absolute"]),
    ('uri = "qemu+ssh://lab/system?no_verify=yes"', {}, ["uri", "no_verify=", "0, 1"]),
    ('uri = "qemu+ssh://lab/system?socket=/run/a%20b;x"', {}, ["uri", "';'"]),
    ('uri = "qemu+ssh://lab/system?socket=/run/$(x)"', {}, ["uri", "socket=", "letters, digits"]),
    ('uri = "qemu+ssh://lab/system?keyfile=/k%0AMatch%20exec%20%22touch%20/tmp/x%22"', {},
     ["uri", "keyfile=", "'\\n'", "line-break"]),
    ('uri = "qemu+ssh://lab/system?keyfile=/k%E2%80%A8x"', {}, ["uri", "keyfile=", "'\\u2028'"]),
    ('uri = "qemu+ssh://lab/system?keyfile=/k%FF"', {}, ["uri", "keyfile=", "non-UTF-8"]),
    ('uri = "qemu+ssh://me%0AMatch@lab/system"', {}, ["uri", "user", "'\\n'"]),
    ('uri = "qemu+ssh://lab%0D/system"', {}, ["uri", "host", "'\\r'"]),
    ('uri = "qemu+ssh://lab/sys%0Atem"', {}, ["uri", "path", "'\\n'"]),
    ('uri = "qemu+ssh://-oProxyCommand=sh/system"', {}, ["uri", "'-oProxyCommand=sh'", "starts with '-'"]),
    ('uri = "qemu+ssh://%2Doat/system"', {}, ["uri", "starts with '-'"]),
    ('uri = "qemu+ssh://lab:x/system"', {}, ["uri", "port 'x'", "1 to 65535"]),
    ('uri = "qemu+ssh://lab:0/system"', {}, ["uri", "port '0'", "1 to 65535"]),
    ('uri = "qemu+ssh://lab:65536/system"', {}, ["uri", "port '65536'", "1 to 65535"]),
    ('uri = "qemu+ssh://lab:' + "9" * 30 + '/system"', {}, ["uri", "1 to 65535"]),
    ('uri = "qemu+ssh://lab:\uff12\uff12/system"', {}, ["uri", "1 to 65535"]),  # fullwidth digits
    ('uri = "qemu+ssh://[::1/system"', {}, ["uri", "'[::1'", "brackets"]),
    ('uri = "qemu+ssh://::1/system"', {}, ["uri", "brackets"]),
    ('uri = "qemu+ssh://[lab]/system"', {}, ["uri", "'[lab]'", "IPv6"]),
    ('uri = "qemu+ssh://[::g]/system"', {}, ["uri", "'::g'", "IPv6"]),
    ('uri = "qemu+ssh://lab%20-oX/system"', {}, ["uri", "host name"]),
    ('uri = "qemu+ssh://me:secret@lab/system"', {}, ["uri", "password"]),
    ('uri = "qemu+ssh://me@/system"', {}, ["uri", "no host"]),
    ('uri = "qemu+unix://lab/system"', {}, ["uri", "remove the host"]),
    ('uri = "qemu+ssh://lab/system#x"', {}, ["uri", "#fragment"]),
    ('clones = [' + ", ".join(f'"n{i}"' for i in range(20000)) + ']', {}, ["clones", "at most 250"]),
    ('[kernel]\ncmdline = "quiet\\u0085init=/bin/sh"', {}, ["kernel.cmdline", "line-break"]),
]


# What a user of qemu+ssh, qemu+tls or qemu+unix needs from a uri still loads.
GOOD_URIS = [
    "qemu:///system", "qemu:///session", "test:///default",
    "qemu+unix:///system?socket=/run/libvirt/libvirt-sock", "qemu:///system?mode=legacy",
    "qemu+ssh://root@lab/system", "qemu+ssh://user@host:2222/system?keyfile=/k&no_verify=1",
    "qemu+ssh://lab/system?no_tty=1&socket=/var/run/libvirt/libvirt-sock&mode=direct",
    "qemu+ssh://me@lab/system?keyfile=/home/me/.ssh/lab%20key", "qemu+ssh://lab.example./system",
    "qemu+libssh2://me@lab/system?known_hosts=/root/.ssh/known_hosts&known_hosts_verify=auto&sshauth=privkey,agent",
    "qemu+libssh://lab/system?keyfile=/k&sshauth=agent",
    "qemu+tls://host/system", "qemu://host/system?no_verify=1&pkipath=/etc/pki/dali",
    "qemu+tcp://host:16509/system", "qemu+ssh://[::1]:22/system", "qemu+ssh://[fe80::1%25eth0]/system",
]


@pytest.mark.parametrize("uri", GOOD_URIS)
def test_the_uris_a_user_needs_load(tmp_path, uri):
    assert load(write(tmp_path, f'uri = "{uri}"\n[device]\nstyle = "native"\n'), env={}).uri == uri
    native = write(tmp_path, '[device]\nstyle = "native"\n')
    assert load(native, env={"LIBVIRT_DEFAULT_URI": uri}).uri == uri


@pytest.mark.parametrize("toml, env, words", BAD_VALUES)
def test_bad_values_name_the_setting(tmp_path, toml, env, words):
    with pytest.raises(ConfigError) as e:
        load(write(tmp_path, toml), env=env)
    message = str(e.value)
    assert "\n" not in message and len(message) < 400, message
    for w in words:
        assert w in message


def test_missing_file_names_config_option(tmp_path):
    with pytest.raises(ConfigError, match="config=PATH"):
        load(tmp_path / "nope.toml", env={})


def test_sizes():
    assert settings.parse_size("1G") == 1 << 30
    assert settings.parse_size("512M") == 512 << 20
    assert settings.parse_size("2GiB") == 2 << 30
    assert settings.parse_size(4096) == 4096


def test_dhcp_range_defaults_to_the_subnet_but_the_host():
    assert settings.dhcp_range("192.168.7.254", 24) == ("192.168.7.1", "192.168.7.253")
    assert settings.dhcp_range("10.0.0.1", 28) == ("10.0.0.2", "10.0.0.14")
    assert settings.dhcp_range("10.0.0.1", 24, "10.0.0.50", "10.0.0.60") == ("10.0.0.50", "10.0.0.60")


def test_a_symlinked_dir_is_its_real_path(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    assert load(env={"DALI_DIR": str(tmp_path / "link")}).data_dir == real


def test_every_setting_has_a_default_that_loads():
    """The declared defaults pass their own validation (an empty file gives the seed's cluster)."""
    empty = load(REPO / "cluster.toml", env={})
    assert empty.tag == "ivp" and empty.clones == ("b", "c")


def test_readme_table_is_the_declaration():
    """The README's settings table is generated from dali/settings.py; they must not drift."""
    readme = (REPO / "README.md").read_text()
    table = settings.settings_table()
    assert table in readme, "README.md's settings table differs: paste `python -m dali.settings table`"
    rows = [line for line in readme.splitlines() if re.match(r"\| `[a-z_.]+` \| (`[A-Z_]+`)? \|", line)]
    assert len(rows) == len(settings.SETTINGS)


def test_cluster_toml_is_the_declaration():
    assert (REPO / "cluster.toml").read_text() == settings.commented_toml(), \
        "cluster.toml differs: regenerate it with `python -m dali.settings toml > cluster.toml`"


def test_environment_variables_come_from_the_declaration():
    for s in settings.SETTINGS:
        if s.env:
            value = {"DALI_CLONES": "x y", "DALI_MEM_GB": "2", "DALI_VCPUS": "3", "DALI_DIR": "/srv/x",
                     "LIBVIRT_DEFAULT_URI": "test:///default"}.get(s.env, "zz")
            loaded = load(env={s.env: value})
            assert loaded != load(env={}), s.env


# A value other than the default for every setting (with what it needs beside it): a setting
# declared in dali/settings.py but not carried into the Cluster (settings._cluster) loads, and
# changes nothing: test_every_setting_reaches_the_cluster names it.
OTHER_VALUES = {
    "tag": 'tag = "zz"', "original": 'original = "x"', "clones": 'clones = ["d"]', "dir": 'dir = "/srv/zz"',
    "uri": 'uri = "qemu+unix:///system"', "accel": 'accel = "tcg"',
    "share": '[[share]]\nsource = "/usr/share/doc"\ntarget = "/mnt/doc"',
    "network.name": '[network]\nname = "zz"', "network.forward": '[network]\nforward = "none"',
    "network.address": '[network]\naddress = "10.1.2.254"', "network.prefix": '[network]\nprefix = 25',
    "network.dhcp_start": '[network]\naddress = "10.1.2.254"\ndhcp_start = "10.1.2.10"',
    "network.dhcp_end": '[network]\naddress = "10.1.2.254"\ndhcp_end = "10.1.2.20"',
    "fam.size": '[fam]\nsize = "2G"', "node.memory": '[node]\nmemory = "2G"',
    "node.max_memory": '[node]\nmax_memory = "4G"', "node.memory_slots": '[node]\nmemory_slots = 4',
    "node.vcpus": '[node]\nvcpus = 2', "image.path": '[image]\npath = "IMAGE"',
    "image.suite": '[image]\nsuite = "trixie"', "image.mirror": '[image]\nmirror = "http://deb.example/debian"',
    "image.http_proxy": '[image]\nhttp_proxy = "http://proxy.example:3128"',
    "image.extra_packages": '[image]\nextra_packages = ["vim"]', "image.disk_size": '[image]\ndisk_size = "9G"',
    "device.mode": '[device]\nmode = "devdax"', "device.style": '[device]\nstyle = "native"',
    "device.coherence": '[device]\ncoherence = "cached"',
    "device.namespace_from": '[device]\nnamespace_from = "original"',
    "fs.type": '[fs]\ntype = "ocfs2"', "fs.mountpoint": '[fs]\nmountpoint = "/mnt/x"', "fs.slots": '[fs]\nslots = 9',
    "fs.heartbeat_threshold": '[fs]\nheartbeat_threshold = 11',
    "kernel.path": '[kernel]\npath = "BZIMAGE"\nmodules = "MODULES"',
    "kernel.modules": '[kernel]\npath = "BZIMAGE"\nmodules = "MODULES"',
    "kernel.cmdline": '[kernel]\ncmdline = "nokaslr"', "debug.gdb": '[debug]\ngdb = true',
    "clone.mode": '[clone]\nmode = "copy"',
    "apparmor.template": '[apparmor]\ntemplate = "/etc/apparmor.d/libvirt/OTHER"',
    "torture.known_failures": '[torture]\nknown_failures = "BASELINE"',
    "timeouts.boot": '[timeouts]\nboot = 60', "timeouts.shutdown": '[timeouts]\nshutdown = 60',
    "remote.netns": 'uri = "qemu+ssh://lab/system"\n[device]\nstyle = "native"\n[remote]\nnetns = "dali"',
}


def test_every_setting_reaches_the_cluster(tmp_path):
    """Adding a setting takes its declaration (dali/settings.py, SETTINGS) and its place in the
    Cluster (settings._cluster); this test fails for a setting that has only the first."""
    (tmp_path / "disk.qcow2").write_bytes(b"")
    (tmp_path / "bzImage").write_bytes(b"")
    (tmp_path / "mods").mkdir()
    (tmp_path / "mine.toml").write_text("")
    default = load(write(tmp_path, ""), env={})
    missing = [s.key for s in settings.SETTINGS if s.key not in OTHER_VALUES]
    assert not missing, f"give OTHER_VALUES a value for {missing}"
    for key, toml in OTHER_VALUES.items():
        toml = (toml.replace("BZIMAGE", str(tmp_path / "bzImage")).replace("IMAGE", str(tmp_path / "disk.qcow2"))
                .replace("MODULES", str(tmp_path / "mods")).replace("BASELINE", str(tmp_path / "mine.toml")))
        assert load(write(tmp_path, toml), env={}) != default, f"{key} changes nothing in the Cluster"
