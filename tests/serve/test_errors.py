"""The error contract of the single server: every bad request of the table
(tests/serve/error_cases.py) gets its status and OpenAI's error shape, never a 5xx; the Ray
Serve path answers the same table with the same statuses and bodies (tests/serve/test_ray.py)."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi", reason="the serve extra: pip install 'sleepagent[serve]'")

from sleepagent.serve import ServeConfig, serve_in_background

from .error_cases import CASES, KEYS, LIMITS, check, send


@pytest.fixture(scope="module")
def url():
    with serve_in_background(ServeConfig(api_keys=KEYS, **LIMITS)) as base:
        yield base


def test_every_bad_request_gets_its_status_and_openai_shape(url):
    assert len(CASES) >= 40
    wrong = []
    for case in CASES:
        try:
            check(case, send(url, case))
        except AssertionError as e:
            wrong.append(str(e))
    assert not wrong, "\n".join(wrong)
