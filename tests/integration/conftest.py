import sys
import pathlib

sys.path.insert(0, str(pathlib.Path(__file__).parent))

import pytest

from h3env import Worker


@pytest.fixture(scope="module")
def worker():
    """The probe app on two worker processes, one per test module (a module
    that needs another app defines its own)."""
    w = Worker("probe:app", workers=2)
    yield w
    assert w.stop() == 0
