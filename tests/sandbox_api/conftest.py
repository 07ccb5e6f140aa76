from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from sandbox.api import create_app
from sandbox.platform import SandboxPlatform
from tests.sandbox_api.http_operator import HttpOperator


@pytest.fixture
def platform() -> SandboxPlatform:
    return SandboxPlatform(seed=11)


@pytest.fixture
def app(platform: SandboxPlatform) -> FastAPI:
    return create_app(platform=platform)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as client:
        yield client


@pytest.fixture
def operator(client: TestClient, platform: SandboxPlatform) -> HttpOperator:
    return HttpOperator(client, platform)
