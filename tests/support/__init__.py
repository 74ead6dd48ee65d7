"""What the tests share that is not a fixture: running doit as a user does (doit.py), a real
cluster under test and the checks made on one (cluster.py), a cluster's files on libvirt's
in-memory test driver (files.py), which pytest worker runs which module (schedule.py), a second
libvirtd playing a remote host (remote_host.py), and doit held at a point of a test's choosing
(held_doit.py, a script). tests/conftest.py holds the fixtures and pytest's hooks."""
