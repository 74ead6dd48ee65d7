"""The stages of dali's pipeline, one module each, in pipeline order:

    preflight  network  fam  apparmor  image  accel  checker  disks  domain  original  freeze  prune  clone
    lifecycle  verify   (commands on the running cluster, outside the build)

Every module exposes gen_tasks(cluster, files, virt), a generator of doit task dicts, and
nothing else: it says *when* something runs (dependencies, up-to-date checks, clean); *how*
lives in the library, dali/. `files` is where the cluster's files live (dali/storage/), chosen
once by dodo.py: no stage asks whether the libvirt host is this machine. dodo.py lists one
task_* per stage.
"""
