"""dali's pipeline: one module per stage, each yielding doit task dicts (see dodo.py)."""
