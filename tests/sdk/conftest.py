"""Fixtures for driving the emulator with the official Huawei Cloud Python SDKs.

The emulator binary is taken from $CCM_AGENT_BIN (default: target/debug/ccm-agent); it is
started once per test session on a free loopback port and stopped at the end.
"""
import os
import subprocess

import pytest

AK = "EMULATORACCESSKEY0001"
SK = "emulator-secret-key-not-for-production"
DOMAIN_ID = "0970dd7a1300f5672ff2c003c60ae115"


def _binary():
    default = os.path.join(os.path.dirname(__file__), "..", "..", "target", "debug", "ccm-agent")
    return os.environ.get("CCM_AGENT_BIN", default)


@pytest.fixture(scope="session")
def emulator():
    proc = subprocess.Popen(
        [_binary(), "emulator", "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    url = proc.stdout.readline().strip()
    if not url.startswith("http"):
        proc.kill()
        raise RuntimeError(f"emulator did not start (first line: {url!r})")
    yield {"endpoint": url, "ak": AK, "sk": SK, "domain_id": DOMAIN_ID}
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def global_credentials(emulator):
    from huaweicloudsdkcore.auth.credentials import GlobalCredentials

    return GlobalCredentials(emulator["ak"], emulator["sk"], emulator["domain_id"])


@pytest.fixture
def http_config():
    from huaweicloudsdkcore.http.http_config import HttpConfig

    config = HttpConfig.get_default_config()
    config.ignore_ssl_verification = False
    config.retry_times = 0
    config.timeout = (5, 30)
    return config
