"""Test-wide settings: hypothesis runs derandomized under CI so a run's outcome never depends on luck."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

# Outcomes must not depend on the machine's speed: no deadline, no too_slow health check.
settings.register_profile(
    "ci", derandomize=True, deadline=None, print_blob=True, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))
