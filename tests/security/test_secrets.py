"""Issue 12 item 7: passwords in upstream URLs never reach a message, the log or SHOW CONFIG, also when the URL
is malformed; a refused RELOAD's message does not outlive the next good reload."""

from __future__ import annotations

import subprocess

import pytest

from pgcutover.core.config import ConfigError, UpstreamDsn, redact_url
from pgcutover.proxy.embedded import pg_binary

GOOD_SECRET = "GoodSecret-1"
TYPOS = {  # a mistyped URL each, every one with its own password
    "TypoSecret-port": "postgresql://postgres:TypoSecret-port@127.0.0.1:54x2/postgres",
    "TypoSecret-scheme": "postgresq://postgres:TypoSecret-scheme@127.0.0.1:5432/postgres",
    "Typo@Secret/slash": "postgresql://postgres:Typo@Secret/slash@127.0.0.1:5432/postgres?sslmode=bogus",
    "TypoSecret-ipv6": "postgresql://postgres:TypoSecret-ipv6@[::1/postgres",
}


@pytest.mark.parametrize("secret", sorted(TYPOS))
def test_config_errors_never_quote_a_password(secret: str) -> None:
    with pytest.raises(ConfigError) as caught:
        UpstreamDsn.parse(TYPOS[secret])
    assert secret not in str(caught.value)
    assert secret not in redact_url(TYPOS[secret])


def test_dsn_repr_hides_the_password() -> None:
    dsn = UpstreamDsn.parse(f"postgresql://app:{GOOD_SECRET}@db:5432/x")
    assert dsn.password == GOOD_SECRET
    assert GOOD_SECRET not in repr(dsn) and GOOD_SECRET not in dsn.redacted


def admin(proxy, command: str) -> subprocess.CompletedProcess:
    dsn = f"postgresql://postgres@127.0.0.1:{proxy.port}/pgcutover"
    return subprocess.run([pg_binary("psql"), "-X", "-At", "-d", dsn, "-c", command],
                          capture_output=True, text=True, timeout=30)


def test_reload_with_a_mistyped_url_shows_no_password(pg, start_proxy) -> None:
    good = f"postgresql://postgres:{GOOD_SECRET}@127.0.0.1:{pg.port}/postgres?sslmode=disable"
    proxy = start_proxy('[admin]\nusers = ["postgres"]\n')
    original = proxy.config_path.read_text()
    default_upstream = next(line for line in original.splitlines() if line.startswith("upstream = "))
    proxy.config_path.write_text(original.replace(default_upstream, f'upstream = "{good}"'))
    assert admin(proxy, "RELOAD").returncode == 0
    seen = []
    for url in TYPOS.values():
        proxy.config_path.write_text(original.replace(default_upstream, f'upstream = "{url}"'))
        refused = admin(proxy, "RELOAD")
        assert refused.returncode != 0 and "reload refused" in refused.stderr
        shown = admin(proxy, "SHOW CONFIG").stdout
        error = next(line for line in shown.splitlines() if line.startswith("last_reload_error|"))
        assert "upstream" in error  # names the key (file:line: [proxy]: upstream = (hidden): ...)
        seen += [refused.stdout, refused.stderr, shown]
    # a good reload afterwards: the refused file's message is gone
    proxy.config_path.write_text(original.replace(default_upstream, f'upstream = "{good}"'))
    assert admin(proxy, "RELOAD").returncode == 0
    shown = admin(proxy, "SHOW CONFIG").stdout
    assert "last_reload_error|" in shown.splitlines()
    seen += [shown, proxy.log()]
    everything = "\n".join(seen)
    for secret in [*TYPOS, GOOD_SECRET, "TypoSecret", "Secret/slash"]:
        assert secret not in everything, secret
    assert "reload of" in proxy.log() and "(hidden)" in proxy.log()  # the value is never echoed
