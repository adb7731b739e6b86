"""`in_submission`: how an exercise's check runs a piece of its own code where your code is.

The checks under each exercise question call your functions. When your instructor grades the
notebook, the checks run in a separate process (the judge, outside the sandbox your notebook runs
in), and a few of them need to run a step right next to your objects: your optimizer stepping a
model, a backward pass through your function. They wrap that step in a function and call
`in_submission(step, ...)`. In your own notebook that simply calls `step(...)`; in the grader it
runs inside the sandbox and sends back only plain data (numbers, tensors, containers).
"""

from __future__ import annotations

_RUNNER = None   # set by the grader's judge (course_utils.grading.judge); None in a notebook


def in_submission(function, *args, **kwargs):
    """Run `function(*args, **kwargs)` where the student's code is, and return its result."""
    if _RUNNER is None:
        return function(*args, **kwargs)
    return _RUNNER(function, args, kwargs)
