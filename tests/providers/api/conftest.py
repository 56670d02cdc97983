"""The API providers' shared fixture: ``spec``, each provider's wire format in turn."""

from __future__ import annotations

import pytest

from tests.providers.api.specs import SPECS, Spec


@pytest.fixture(params=sorted(SPECS))
def spec(request: pytest.FixtureRequest) -> Spec:
    """Each API provider's wire format (``specs.SPECS``), one test run per provider."""
    return SPECS[request.param]
