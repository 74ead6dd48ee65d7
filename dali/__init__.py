"""dali's library: how each step is done. It knows nothing of doit's graph; the stage modules in
tasks/ decide when each step runs. README.md's "Layout" lists the modules and their one job.
"""
