"""Auth failures of a paid service (``--auth required``), each on its own: no credential, a mistyped,
revoked or unknown key, an expired or forged token; failures from one address are rate-limited (429
with Retry-After, before the credential is looked at, also for a right one); no credential is ever
written to the log."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from tenants_harness import TOKEN_SECRET, tenant_keys
from test_service_api import serving, settings_for
from vcstream.service.auth import FAILURE_BURST
from vcstream.service.tenancy import tokens
from vcstream.service.tenancy.plans import BUILT_IN
from vcstream.service.tenancy.store import TenantStore


def test_each_bad_credential_is_refused_and_never_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "var"
    key, other = tenant_keys(data, "Acme", "Globex", plan="unlimited")
    database = sa.create_engine(f"sqlite:///{data / 'vcstream.db'}")
    store = TenantStore(database, BUILT_IN)
    revoked = store.create_key("Globex")
    store.revoke_key(revoked.id)
    acme_id = store.tenant("Acme").id
    database.dispose()
    expired = tokens.mint(TOKEN_SECRET, tokens.TokenGrant(acme_id, None, False, time.time() - 60))
    forged = tokens.mint("x" * 40, tokens.TokenGrant(acme_id, None, True, time.time() + 600))
    caplog.set_level(logging.DEBUG)

    async def scenario() -> None:
        async with serving(settings_for(data, auth="required", token_secret=TOKEN_SECRET)) as client:

            async def status(header: str | None) -> tuple[int, str]:
                headers = {} if header is None else {"Authorization": header}
                response = await client.get("/api/voices", headers=headers)
                return response.status, (await response.json())["error"] if response.status != 200 else ""

            assert await status(f"Bearer {key}") == (200, "")
            assert await status(f"Bearer {other}") == (200, "")
            for header in (
                None,  # no credential
                f"Basic {key}",  # not a Bearer
                f"Bearer {key[:-1]}x",  # mistyped secret
                f"Bearer {revoked.key}",  # revoked
                "Bearer vcsk_0000000000000000_" + "A" * 43,  # unknown id
                f"Bearer {expired}",
                f"Bearer {forged}",
            ):
                assert await status(header) == (401, "unauthorized"), header
            # one address that keeps failing is slowed down, even when it then has the right key
            for _ in range(FAILURE_BURST):
                await status(f"Bearer {key[:-1]}x")
            response = await client.get("/api/voices", headers={"Authorization": f"Bearer {key}"})
            assert response.status == 429 and int(response.headers["Retry-After"]) >= 1
            assert (await response.json())["error"] == "too_many_failures"

    asyncio.run(scenario())
    logged = caplog.text
    for secret in (key, other, revoked.key, expired, forged, key.rsplit("_", 1)[1]):
        assert secret not in logged
    assert "refused a credential" in logged  # the failures are logged, without what was sent
