"""Instructor tooling for homework: exercises built from solutions, and a grader whose scores a
submission cannot forge. Modules, in the order a submission meets them:

- assignments: solutions/NN_*.ipynb (otter's format) -> exercises/, and the hidden tests;
- batch: `course grade`: many submissions, in parallel, resumable, into a gradebook;
- sandbox: the OS sandbox around one submission (bubblewrap namespaces, cgroup, limits);
- worker: inside the sandbox: runs the student's cells, then answers calls with plain data;
- wire: the messages between the two sides, and the plain data that cannot carry code;
- judges: the judge server, which forks one judge per submission with its libraries imported;
- judge: outside the sandbox: runs the tests against those answers and decides the score;
- review: flags that ask the instructor to look (they change no score);
- gradescope: the same grading packed as a Gradescope autograder (`course grade --gradescope`);
- release: the student edition, without solutions or hidden tests (`course release`).
"""

from .assignments import (EXERCISES_DIR, SOLUTIONS_DIR, Autograder, GradingError, build_autograder,
                          build_exercises, check_exercises, find_solution_leaks, solution_lines,
                          solution_notebooks)
from .batch import (DEFAULT_MEMORY_GB, DEFAULT_TIMEOUT, GradeResult, feedback_text, grade,
                    write_gradebook)
from .sandbox import isolation, isolation_warning

__all__ = ["EXERCISES_DIR", "SOLUTIONS_DIR", "Autograder", "GradingError", "build_autograder",
           "build_exercises", "check_exercises", "find_solution_leaks", "solution_lines",
           "solution_notebooks", "DEFAULT_MEMORY_GB", "DEFAULT_TIMEOUT", "GradeResult",
           "feedback_text", "grade", "write_gradebook", "isolation", "isolation_warning"]
