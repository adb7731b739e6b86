"""Settings for the whole test run, notebooks (nbval) included: no windows, no live redraws."""
import os

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ["COURSE_HEADLESS"] = "1"  # nbval's kernels inherit it: live plots draw once, at the end
