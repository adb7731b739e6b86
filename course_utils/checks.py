"""`in_submission`: how an exercise's check runs a piece of its own code where your code is.

The checks under each exercise question call your functions. When your instructor grades the
notebook, the checks run in a separate process (the judge, outside the sandbox your notebook runs
in), and a few of them need to run a step right next to your objects: your optimizer stepping a
model, a backward pass through your function. They wrap that step in a function and call
`in_submission(step, ...)`. In your own notebook that simply calls `step(...)`; in the grader it
runs inside the sandbox and sends back only plain data (numbers, tensors, containers).

`is_stand_in` tells a check whether an object of yours stayed in the sandbox (a model of your own
class): checks that score a model ask for one built from PyTorch's layers, which the grader
rebuilds and runs itself.
"""

from __future__ import annotations

_RUNNER = None   # set by the grader's judge (course_utils.grading.judge); None in a notebook


def in_submission(function, *args, **kwargs):
    """Run `function(*args, **kwargs)` where the student's code is, and return its result."""
    if _RUNNER is None:
        return function(*args, **kwargs)
    return _RUNNER(function, args, kwargs)


_STAND_IN = None  # set by the judge: the class of its stand-ins for objects left in the sandbox


def is_stand_in(obj) -> bool:
    """In the grader: whether `obj` stayed in the sandbox (a model of the student's own class, say),
    so that what it computes would be the submission's word, not a measurement. A model built
    only from PyTorch's own layers comes to the grader by value instead, and is run there.
    In a notebook: always False."""
    return _STAND_IN is not None and type(obj) is _STAND_IN
