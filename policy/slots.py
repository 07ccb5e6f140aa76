"""The slot syntax of actions in slot form: ``⟦source⟧`` stands for a value the state offers (``policy.values``).

A module of its own so that the word readers (``policy.words``), which strip slots from templates, and the value
sources (``policy.values``), which read the rows a customer names through them (``policy.rows``), do not import
each other.
"""

from __future__ import annotations

import re

SLOT_OPEN = "⟦"
SLOT_CLOSE = "⟧"
SLOT = re.compile(r"⟦([^⟦⟧]+)⟧")
