def run_page(run): return ""
def compare_disk_page(a, b): return ""
def compare_runs_page(runs): return ""
