# SPDX-License-Identifier: MIT OR Apache-2.0
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cfsrun import CONFORMANCE, REPO, cfsctl  # noqa: E402,F401


@pytest.fixture
def run_cfsctl():
    return cfsctl
