"""Every command the README shows is run by a test: this table says which, and the check below
fails for a command the README gains without one (or a test that is renamed away)."""

import re

from dali.cluster import REPO

# README command -> (test module, the test or fixture in it that runs that command)
RUN_BY = {
    "scripts/setup && .venv/bin/doit": ("test_cluster.py", "test_doit_prepares_the_original"),
    "scripts/setup && .venv/bin/pytest -ra tests": (None, None),  # .ci/run, checked below
    ".venv/bin/doit start": ("conftest.py", "running"),
    ".venv/bin/doit status": ("test_cluster_living.py", "test_status_rows_match_libvirt_and_the_guests"),
    ".venv/bin/doit verify": ("test_cluster.py", "test_start_then_verify"),
    ".venv/bin/doit pssh uname -r": ("test_cluster_living.py", "test_pssh_shows_every_node_and_fails_with_a_failing_node"),
    "ssh -F state/ivp/ssh_config ivpb": ("test_cluster_living.py", "test_ssh_with_the_generated_config"),
    ".venv/bin/doit torture namespace lock:kind=flock --seconds 60 --crash c@10":
        ("test_torture.py", "test_a_node_forced_off_mid_run_stalls_the_others_and_the_checks_hold"),
    ".venv/bin/doit shutdown": ("test_cluster_living.py", "test_shutdown"),
    ".venv/bin/doit clean": ("test_cluster_living.py", "test_clean_leaves_nothing"),
}


def readme_commands() -> list[str]:
    """The command lines of the README's ```sh blocks, without their comments."""
    blocks = re.findall(r"^```sh\n(.*?)^```", (REPO / "README.md").read_text(), re.M | re.S)
    return [line.split("  #")[0].strip() for block in blocks for line in block.splitlines() if line.strip()]


def test_every_readme_command_is_run_by_a_test():
    commands = readme_commands()
    assert commands, "the README shows commands in ```sh blocks"
    missing = [c for c in commands if c not in RUN_BY]
    assert not missing, f"no test runs these README commands (add one, and a row to RUN_BY): {missing}"
    for command, (module, name) in RUN_BY.items():
        assert command in commands, f"RUN_BY names a command the README no longer shows: {command}"
        if module is None:  # CI's own command: .ci/run runs its two halves
            ci = (REPO / ".ci" / "run").read_text()
            assert all(half in ci for half in command.split(" && ")), ".ci/run runs the README's test command"
            continue
        source = (REPO / "tests" / module).read_text()
        assert re.search(rf"^def {name}\(", source, re.M), f"{module} has no {name}: update RUN_BY"
