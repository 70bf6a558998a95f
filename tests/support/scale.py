"""How big the suite's scale tests run (no tests here).

Owns FULL_SCALE: `make test` (and CI) sets APPLIANCE_TEST_FULL_SCALE=1 and the scale tests run at
the sizes their promise names (10,000 flooding addresses, the audit search's real 50,000-position
bound); `make test-fast` runs them at a tenth of that, the same code paths and assertions, so that
the everyday loop stays under two minutes. Set the variable yourself to run them full anywhere.
"""

from __future__ import annotations

import os

FULL_SCALE = os.environ.get("APPLIANCE_TEST_FULL_SCALE") == "1"


def scaled(full: int) -> int:
    """`full` under FULL_SCALE, else a tenth of it."""
    return full if FULL_SCALE else full // 10
