"""Settings for the whole test run, notebooks (nbval) included."""
import os

import matplotlib

matplotlib.use("Agg")  # this process only: kernels keep Jupyter's inline backend, so figures render
os.environ.pop("MPLBACKEND", None)
os.environ["COURSE_HEADLESS"] = "1"  # nbval's kernels inherit it: live plots draw once, at the end
