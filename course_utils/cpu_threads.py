"""How long PyTorch's CPU threads spin while they wait: the cause of notebooks that seemed to stall.

PyTorch splits each CPU operation across threads (OpenMP, one per core), and a thread that
finishes first spins, checking in a tight loop, until the others are done. On an idle machine
that is fastest. When another program holds a core (a second notebook, a browser, the grader),
the spinning thread burns the time slice its partner needs: in a Jupyter kernel on a busy 2-core
machine, three epochs of LeNet took 289 s instead of 9 s, past any sensible cell limit. (Kernels
run in a session of their own, so the other program's low priority does not help them.)

Spinning 10,000 rounds before sleeping, instead of GNU OpenMP's 300,000, brought that run to 31 s
and costs nothing measurable on an idle machine; sleeping at once (OMP_WAIT_POLICY=PASSIVE) was
19 s loaded but 45% slower idle. benchmarks/stress_notebook_runs.py measures it.

OpenMP reads this once, when torch is first imported, so it must be in the environment before
that: importing course_utils sets it (unless you set it yourself), and every Jupyter kernel,
`course run` and the tests start afterwards inherit it.
"""

from __future__ import annotations

import os

CALM_SPINNING = {"GOMP_SPINCOUNT": "10000"}  # GNU OpenMP, which PyTorch's Linux builds use


def calm_openmp_spinning(environ=None) -> dict:
    """Put CALM_SPINNING into `environ` (os.environ by default) where not set; returns `environ`."""
    environ = os.environ if environ is None else environ
    for name, value in CALM_SPINNING.items():
        environ.setdefault(name, value)
    return environ
