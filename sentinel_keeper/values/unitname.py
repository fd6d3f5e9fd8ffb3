"""The systemd service names a policy may give for Ollama's unit (``ollama.unit``): one rule,
used by the policy's validation (so `check` reports a bad name with its file, line and column)
and by `apply-override` (which builds a path and a systemctl argument from it). Pure.

A name is systemd's own kind of unit name (letters, digits and ``: _ . \\ -``, at most one
``@`` for a template instance, ending in ``.service``, at most 255 characters), and further
never starts with ``-`` (systemctl would read it as an option) or ``.`` (a hidden file, or a
path such as ``../``).
"""

from __future__ import annotations

import re

MAX_UNIT_NAME = 255
_CHARS = r"A-Za-z0-9:_.\\-"
UNIT_NAME_PATTERN = rf"^(?![-.])[{_CHARS}]+(@[{_CHARS}]*)?\.service$"
_UNIT_NAME = re.compile(UNIT_NAME_PATTERN)


def unit_name_problem(unit: object) -> str | None:
    """None if ``unit`` is such a service name (``ollama.service``); else why not."""
    if isinstance(unit, str) and len(unit) <= MAX_UNIT_NAME and _UNIT_NAME.match(unit):
        return None
    return (
        'must be a systemd service name such as "ollama.service" (letters, digits and '
        ": _ . \\ - with at most one @, not starting with - or .)"
    )
