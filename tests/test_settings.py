"""Settings: precedence (defaults < TOML < environment < flags) and every kind of bad value."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance import settings
from appliance.errors import ConfigError
from appliance.settings import Endpoint

from .conftest import clean_env, run_cli
from .support.cli import run_verb


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "appliance.toml"
    path.write_text(text)
    return path


def test_defaults_without_file_or_env() -> None:
    s = settings.load(env={})
    assert s.server.listen == Endpoint("0.0.0.0", 443)
    assert s.server.state_dir == Path("/var/lib/appliance")
    assert s.tls.mode == "local"
    assert s.log.format == "json"
    assert s.auth.require_2fa == ("admin",)
    assert s.egress.allow_private is True


def test_dev_defaults() -> None:
    s = settings.load(env={}, dev=True)
    assert s.server.listen == Endpoint("localhost", 8443)
    assert s.server.state_dir == Path(".appliance")
    assert s.log.format == "text"
    assert s.dev


def test_precedence_file_then_env_then_flags(tmp_path: Path) -> None:
    cfg = write(tmp_path, '[server]\nlisten = "127.0.0.1:1111"\nstate_dir = "/srv/a"\n'
                          '[log]\nlevel = "debug"\nformat = "text"\n')
    s = settings.load(config_file=cfg, env={})
    assert (s.server.listen.port, s.server.state_dir, s.log.level) == (1111, Path("/srv/a"), "debug")

    env = {"APPLIANCE_SERVER_LISTEN": "127.0.0.1:2222", "APPLIANCE_LOG_LEVEL": "warning"}
    s = settings.load(config_file=cfg, env=env)
    assert (s.server.listen.port, s.log.level, s.log.format) == (2222, "warning", "text")

    s = settings.load(config_file=cfg, env=env, flags={"listen": "127.0.0.1:3333",
                                                       "state_dir": "/srv/b"})
    assert (s.server.listen.port, s.server.state_dir, s.log.level) == (3333, Path("/srv/b"),
                                                                       "warning")


def test_lists_from_toml_and_env(tmp_path: Path) -> None:
    cfg = write(tmp_path, '[egress]\nallow = ["10.0.0.0/8", "db.example.com:5432"]\n'
                          'source_address = ["192.0.2.10", "2001:db8::10"]\n')
    s = settings.load(config_file=cfg, env={})
    assert s.egress.allow == ("10.0.0.0/8", "db.example.com:5432")
    assert s.egress.source_address == ("192.0.2.10", "2001:db8::10")
    s = settings.load(config_file=cfg, env={"APPLIANCE_EGRESS_ALLOW": "api.example.com, 10.1.0.0/16"})
    assert s.egress.allow == ("api.example.com", "10.1.0.0/16")
    s = settings.load(env={"APPLIANCE_AUTH_REQUIRE_2FA": "admin,developer"})
    assert s.auth.require_2fa == ("admin", "developer")


def test_trusted_proxies_and_metrics_access() -> None:
    import ipaddress

    s = settings.load(env={})
    assert s.server.trusted_proxies == () and s.metrics.allow == ()
    assert s.metrics.datasource_names is False
    s = settings.load(env={"APPLIANCE_SERVER_TRUSTED_PROXIES": "10.0.0.5, fd00::/8",
                           "APPLIANCE_METRICS_ALLOW": "127.0.0.1",
                           "APPLIANCE_METRICS_DATASOURCE_NAMES": "true"})
    assert s.server.trusted_proxies == (ipaddress.ip_network("10.0.0.5/32"),
                                        ipaddress.ip_network("fd00::/8"))
    assert s.metrics.allow == (ipaddress.ip_network("127.0.0.1/32"),)
    assert s.metrics.datasource_names is True
    with pytest.raises(ConfigError) as info:
        settings.load(env={"APPLIANCE_SERVER_TRUSTED_PROXIES": "10.0.0.0/8,nonsense"})
    assert info.value.key == "APPLIANCE_SERVER_TRUSTED_PROXIES"


def test_ipv6_endpoint_and_ephemeral_port() -> None:
    s = settings.load(env={}, flags={"listen": "[::1]:0"})
    assert s.server.listen == Endpoint("::1", 0)
    assert str(s.server.listen) == "[::1]:0"


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ('[server]\nlisten = 443\n', "server.listen"),
        ('[server]\nlisten = "nohostport"\n', "server.listen"),
        ('[server]\nlisten = "127.0.0.1:70000"\n', "server.listen"),
        ('[server]\nlisten = "[zz::1]:443"\n', "server.listen"),
        ('[server]\nlisten = "bad host!:443"\n', "server.listen"),
        ('[server]\nmax_body_bytes = "many"\n', "server.max_body_bytes"),
        ('[server]\nmax_body_bytes = 10\n', "server.max_body_bytes"),
        ('[server]\nmax_body_bytes = true\n', "server.max_body_bytes"),
        ('[server]\nrequest_timeout = -1\n', "server.request_timeout"),
        ('[server]\nrequest_timeout = nan\n', "server.request_timeout"),
        ('[server]\nstate_dir = ""\n', "server.state_dir"),
        ('[server]\nhandshake_timeout = 0\n', "server.handshake_timeout"),
        ('[server]\nfirst_byte_timeout = "soon"\n', "server.first_byte_timeout"),
        ('[server]\nrequest_head_timeout = 301\n', "server.request_head_timeout"),
        ('[server]\nkeepalive_timeout = inf\n', "server.keepalive_timeout"),
        ('[server]\nmax_connections = 0\n', "server.max_connections"),
        ('[server]\nmax_connections_per_address = 1.5\n', "server.max_connections_per_address"),
        ('[server]\nstate_dir = "a\\u0000b"\n', "server.state_dir"),
        ('[tls]\nmode = "letsencrypt"\n', "tls.mode"),
        ('[tls]\nnames = "example.com"\n', "tls.names"),
        ('[tls]\nnames = ["exa mple.com"]\n', "tls.names"),
        ('[tls]\nemail = "not-an-email"\n', "tls.email"),
        ('[tls]\ndirectory = "http://insecure.example/dir"\n', "tls.directory"),
        ('[egress]\nmode = "open"\n', "egress.mode"),
        ('[egress]\nsource_address = ["10.0.0.300"]\n', "egress.source_address"),
        ('[egress]\nallow = ["10.0.0.0/33"]\n', "egress.allow"),
        ('[egress]\ndeny = ["host:99999"]\n', "egress.deny"),
        ('[egress]\nallow_private = "maybe"\n', "egress.allow_private"),
        ('[auth]\nrequire_2fa = ["root"]\n', "auth.require_2fa"),
        ('[server]\ntrusted_proxies = "10.0.0.0/8"\n', "server.trusted_proxies"),
        ('[server]\ntrusted_proxies = ["10.0.0.0/33"]\n', "server.trusted_proxies"),
        ('[server]\ntrusted_proxies = ["proxy.example.com"]\n', "server.trusted_proxies"),
        ('[server]\ntrusted_proxies = ["fe80::1%eth0"]\n', "server.trusted_proxies"),
        ('[metrics]\nallow = ["localhost"]\n', "metrics.allow"),
        ('[metrics]\ndatasource_names = "perhaps"\n', "metrics.datasource_names"),
        ('[metrics]\nloopback = true\n', "metrics.loopback"),
        ('[log]\nlevel = "loud"\n', "log.level"),
        ('[log]\nformat = 3\n', "log.format"),
        ('[server]\nlisten = "127.0.0.1:1"\nunknown_key = 1\n', "server.unknown_key"),
        ('[nosuchsection]\nx = 1\n', "nosuchsection"),
        ('server = 1\n', "server"),
        ('[tls]\nmode = "files"\n', "tls.cert_file"),
        ('[tls]\nmode = "acme"\neab_kid = "kid"\n', "tls.eab_kid"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, toml: str, key: str) -> None:
    cfg = write(tmp_path, toml)
    with pytest.raises(ConfigError) as info:
        settings.load(config_file=cfg, env={})
    assert info.value.key.startswith(key), info.value.message


def test_malformed_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        settings.load(config_file=write(tmp_path, "[server\nlisten=="), env={})
    with pytest.raises(ConfigError, match="not found"):
        settings.load(config_file=tmp_path / "missing.toml", env={})
    with pytest.raises(ConfigError, match="directory"):
        settings.load(config_file=tmp_path, env={})
    (tmp_path / "bin.toml").write_bytes(b"\xff\xfe[server]")
    with pytest.raises(ConfigError):
        settings.load(config_file=tmp_path / "bin.toml", env={})


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"APPLIANCE_TLS_MODE": "bogus"}, "APPLIANCE_TLS_MODE"),
        ({"APPLIANCE_TSL_MODE": "local"}, "APPLIANCE_TSL_MODE"),
        ({"APPLIANCE_SERVER_NOPE": "1"}, "APPLIANCE_SERVER_NOPE"),
        ({"APPLIANCE_EGRESS_ALLOW_PRIVATE": "perhaps"}, "APPLIANCE_EGRESS_ALLOW_PRIVATE"),
        ({"APPLIANCE_SERVER_MAX_BODY_BYTES": "1e9"}, "APPLIANCE_SERVER_MAX_BODY_BYTES"),
        ({"APPLIANCE_ENCRYPTION_PASSWORD": "only-half"}, "APPLIANCE_ENCRYPTION_PASSWORD"),
    ],
)
def test_bad_environment_names_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError) as info:
        settings.load(env=env)
    assert info.value.key == named


def test_bad_flag_names_the_flag() -> None:
    with pytest.raises(ConfigError) as info:
        settings.load(env={}, flags={"listen": "nope"})
    assert info.value.key == "--listen"


def test_encryption_variables_are_secrets_not_settings() -> None:
    s = settings.load(env={"APPLIANCE_ENCRYPTION_PASSWORD": "pw-canary-123",
                           "APPLIANCE_ENCRYPTION_SALT": "salt-canary-456"})
    assert s.environment.encryption_password is not None
    assert s.environment.encryption_password.reveal() == "pw-canary-123"
    assert "pw-canary-123" not in repr(s)
    assert "salt-canary-456" not in repr(s)


def test_eab_hmac_key_is_a_secret(tmp_path: Path) -> None:
    cfg = write(tmp_path, '[tls]\nmode = "acme"\nnames = ["example.com"]\n'
                          'eab_kid = "kid"\neab_hmac_key = "hmac-canary-789"\n')
    s = settings.load(config_file=cfg, env={})
    assert "hmac-canary-789" not in repr(s) and "hmac-canary-789" not in str(s.tls)


@pytest.mark.parametrize("verb", ["serve", "init", "doctor"])
def test_cli_exits_2_with_one_line_naming_the_key(tmp_path: Path, verb: str) -> None:
    cfg = write(tmp_path, '[server]\nlisten = "127.0.0.1:1"\nstate_dir = "%s"\n[tls]\nmode = "x"\n'
                % (tmp_path / "state"))
    run = run_cli if verb == "serve" else run_verb  # serve as a real process; the rest here
    result = run(verb, "--config", str(cfg))
    assert result.returncode == 2, result
    output = (result.stderr + result.stdout).strip().splitlines()
    assert len(output) == 1, output
    assert "tls.mode" in output[0]
    assert not (tmp_path / "state").exists()  # nothing was created


def test_cli_environment_error_exit_2(tmp_path: Path) -> None:
    result = run_cli("init", "--state-dir", str(tmp_path / "s"),
                     env=clean_env(APPLIANCE_LOG_LEVEL="chatty"))
    assert result.returncode == 2
    assert "APPLIANCE_LOG_LEVEL" in result.stderr
    assert not (tmp_path / "s").exists()


def test_only_settings_module_reads_the_environment() -> None:
    root = Path(__file__).resolve().parent.parent / "appliance"
    offenders = []
    for path in root.rglob("*.py"):
        text = path.read_text()
        if path.name == "settings.py" and path.parent == root:
            continue
        if "os.environ" in text or "os.getenv" in text or "getenv(" in text:
            offenders.append(str(path.relative_to(root)))
    assert offenders == []
