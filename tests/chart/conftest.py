"""Fixtures for the Helm chart's tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from .helm_chart import ChartRenderer, find_helm


@pytest.fixture(scope="session")
def helm() -> Path:
    return find_helm()


@pytest.fixture(scope="session")
def chart(helm: Path) -> ChartRenderer:
    return ChartRenderer(helm)
