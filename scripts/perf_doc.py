"""docs/performance.md is shared by several benchmarks: each one rewrites only its own `## Heading` section."""

import re
from pathlib import Path

PERFORMANCE_MD = Path(__file__).resolve().parent.parent / "docs" / "performance.md"


def replace_section(heading: str, section: str, path: Path = PERFORMANCE_MD) -> None:
    """Replaces the `## heading` section (up to the next `## `) with `section`, or appends it."""
    text = path.read_text() if path.exists() else "# Performance\n"
    pattern = re.compile(rf"^## {re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section.rstrip("\n") + "\n\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text.rstrip("\n") + "\n")
