"""Flags for the instructor's review: what a submission's code uses of the tools an attack on a
grader needs. Computed here, outside the sandbox, from the notebook's text; a flag changes no
score (the judge decided it, out of the submission's reach), it asks a person to look."""

from __future__ import annotations

import io
import re
import tokenize

# Using a comparison function is fine; assigning to one, or reaching for these tools, is flagged.
SUSPICIOUS_NAMES = (
    "otter", "grader.", "ExceptionTestFile", "sys.modules", "__builtins__", "builtins", "inspect",
    "sys._getframe", "gc", "atexit", "os.dup", "os.dup2", "os.write", "os.read", "os.fstat",
    "fcntl", "/proc", "ctypes", "import_module", "threading", "signal", "__code__", "__globals__",
)
SUSPICIOUS_PATTERNS = (
    r"\b(torch|np|numpy|math|testing|Tensor)(\.\w+)*\.\w+\s*=(?!=)",   # torch.equal = ...
    r"\bsetattr\(\s*(torch|np|numpy|math|builtins)",
    r"\bdel\s+(torch|np|numpy|math)\.",
)


def _code_without_comments(source: str) -> str:
    try:
        tokens = [t for t in tokenize.generate_tokens(io.StringIO(source).readline)
                  if t.type != tokenize.COMMENT]
        return tokenize.untokenize(tokens)
    except (tokenize.TokenError, SyntaxError, IndentationError):
        return source


def suspicious_names(source: str) -> list[str]:
    """What the code (not its comments) uses of SUSPICIOUS_NAMES and SUSPICIOUS_PATTERNS."""
    code = _code_without_comments(source)
    found = set()
    for name in SUSPICIOUS_NAMES:
        pattern = re.escape(name)
        if name[0].isalnum() or name[0] == "_":
            pattern = r"(?<![\w.])" + pattern
        if name[-1].isalnum() or name[-1] == "_":
            pattern += r"(?!\w)"
        if re.search(pattern, code):
            found.add(name)
    for pattern in SUSPICIOUS_PATTERNS:
        for match in re.finditer(pattern, code):
            found.add(match.group(0).strip().rstrip("=").strip())
    return sorted(found)
