"""``anther-deploy`` without a running federation: certificates, keys, checks, errors."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from simulation.deploy import certs, cli, procs, steps
from simulation.deploy.layout import layout
from strategies.runconfig import ConfigError


@pytest.fixture()
def fed(tmp_path):
    lay = layout(tmp_path / "fed")
    steps.init(lay, 2, ["192.168.1.10", "link.example"], 9093, 30, force=False, say=lambda s: None)
    return lay


def test_init_writes_a_ca_a_server_certificate_and_node_keys_with_private_parts_owner_only(fed):
    for secret in (fed.ca_key, fed.link_key, fed.node_key(0), fed.node_key(1)):
        assert secret.stat().st_mode & 0o777 == 0o600, secret
    certs.check_superlink_tls(fed)
    for host in ("localhost", "127.0.0.1", "192.168.1.10", "link.example"):
        assert certs.covers(fed.link_cert, host), host
    assert not certs.covers(fed.link_cert, "10.0.0.1")
    assert json.loads(fed.meta.read_text()) == {"nodes": 2, "port": 9093, "days": 30,
                                                "hosts": ["localhost", "127.0.0.1", "192.168.1.10", "link.example"]}


def test_node_keys_load_as_flower_loads_them(fed):
    """flower-supernode reads the private key as OpenSSH EC; `flwr supernode register` the
    public one (NIST curves only)."""
    from flwr.cli.supernode.register import try_load_public_key
    from flwr.supercore.primitives.asymmetric import public_key_to_bytes

    private = serialization.load_ssh_private_key(fed.node_key(0).read_bytes(), password=None)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    assert try_load_public_key(fed.node_pub(0)) == public_key_to_bytes(private.public_key())
    certs.check_node_key(fed.node_key(0))


def test_init_refuses_to_overwrite_without_force(fed):
    with pytest.raises(ConfigError, match="already holds a deployment.*--force"):
        steps.init(fed, 2, [], 9093, 30, force=False, say=lambda s: None)


@pytest.mark.parametrize("bad", [{"nodes": 0}, {"port": 70000}, {"days": 0}])
def test_init_checks_its_numbers(tmp_path, bad):
    args = {"nodes": 1, "port": 9093, "days": 1, **bad}
    with pytest.raises(ConfigError, match=f"--{next(iter(bad))}"):
        steps.init(layout(tmp_path), args["nodes"], [], args["port"], args["days"], False, say=lambda s: None)


def _resign(fed, days_ago_start: int, days_ago_end: int) -> None:
    """Re-issue the SuperLink certificate with the given validity window (same CA)."""
    ca_key = serialization.load_pem_private_key(fed.ca_key.read_bytes(), password=None)
    ca = x509.load_pem_x509_certificate(fed.ca_cert.read_bytes())
    old = x509.load_pem_x509_certificate(fed.link_cert.read_bytes())
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(old.subject).issuer_name(ca.subject).public_key(old.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=days_ago_start))
            .not_valid_after(now - dt.timedelta(days=days_ago_end)).sign(ca_key, hashes.SHA256()))
    fed.link_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def test_an_expired_certificate_is_named(fed):
    _resign(fed, 10, 1)
    with pytest.raises(ConfigError, match=r"superlink\.crt: certificate expired .*--force"):
        certs.check_superlink_tls(fed)


@pytest.mark.parametrize("swap, error", [("ca_cert", "was not issued by .*ca.crt"),
                                          ("link_key", "superlink.key does not match")])
def test_files_from_another_init_are_named(fed, tmp_path, swap, error):
    other = layout(tmp_path / "other")
    steps.init(other, 1, [], 9093, 30, force=False, say=lambda s: None)
    getattr(fed, swap).write_bytes(getattr(other, swap).read_bytes())
    with pytest.raises(ConfigError, match=error):
        certs.check_superlink_tls(fed)


def test_a_garbled_node_key_is_named(fed):
    fed.node_key(1).write_bytes(b"not a key")
    with pytest.raises(ConfigError, match="node-1/auth_key: not an unencrypted OpenSSH private key"):
        certs.check_node_key(fed.node_key(1))


def test_a_superlink_that_does_not_answer_is_named(fed):
    port = procs.free_port()
    with pytest.raises(ConfigError, match=f"no SuperLink answers at 127.0.0.1:{port}"):
        steps.supernode(fed, 0, f"127.0.0.1:{port}", None, None, say=lambda s: None)


def test_run_before_superlink_says_so(fed):
    with pytest.raises(ConfigError, match="no SuperLink address .*anther-deploy superlink"):
        steps.run(fed, ["rounds=1"], None, None, say=lambda s: None)


def test_not_a_deployment_directory(tmp_path, capsys):
    assert cli.main(["superlink", str(tmp_path)]) == cli.EXIT_CONFIG
    assert "no deploy.json" in capsys.readouterr().err


def test_run_overrides_are_anther_sims_and_only_changed_keys_are_sent(fed):
    changed = steps._run_overrides(fed, ["model=tiny-bert", "strategy=fedkseed", "method=zo_seed", "rounds=2"],
                                   fed.run_dir("r"))
    assert changed == {"model.name": "tiny-bert", "strategy.name": "fedkseed", "method.name": "zo_seed",
                       "rounds": 2, "num_clients": 2, "clients_per_round": 2, "run_dir": str(fed.run_dir("r")),
                       "deployed": True}
    with pytest.raises(ConfigError, match="no_such_key"):
        steps._run_overrides(fed, ["no_such_key=1"], fed.run_dir("r"))


def test_a_node_index_outside_the_deployment_is_named(fed):
    with pytest.raises(ConfigError, match=r"--node must be in 0\.\.1"):
        steps.supernode(fed, 2, "127.0.0.1:9093", None, None, say=lambda s: None)


def test_a_device_profile_gives_the_memory_budget(tmp_path):
    def device_memory_mb(device):  # what `anther-deploy supernode --device` takes as its budget
        return cli.device_args(device, None)[0]

    assert device_memory_mb("rpi5") == 3000
    own = tmp_path / "pi.yaml"
    own.write_text("profiles:\n  mypi:\n    memory_mb: 1500\n")
    assert device_memory_mb(str(own)) == 1500
    with pytest.raises(ConfigError, match="neither a profile .*rpi5"):
        device_memory_mb("toaster")


def test_a_node_polls_fast_for_a_while_after_a_message_or_reply_then_backs_off_to_its_interval():
    from simulation.deploy.supernode_main import HOT_POLL_S, HOT_WINDOW_S, PollWaits, _noting_replies

    now = [0.0]
    waits = PollWaits(0.25, clock=lambda: now[0])
    assert [waits.empty_pull() for _ in range(2)] == [0.25, 0.25]  # idle from the start
    waits.had_message()
    assert [waits.empty_pull() for _ in range(3)] == [HOT_POLL_S] * 3  # the window: the next message is near
    now[0] += HOT_WINDOW_S
    assert [waits.empty_pull() for _ in range(4)] == [0.05, 0.1, 0.2, 0.25]  # then back off to the interval
    push = _noting_replies(lambda: None, waits)  # Flower's _push_messages, once the reply is sent
    push()
    assert waits.empty_pull() == HOT_POLL_S


def test_a_nodes_config_carries_its_budget_and_device_as_flower_parses_it():
    from flwr.common.config import parse_config_args

    from client.budget import device_facts
    from simulation.deploy.steps import node_config

    parsed = parse_config_args([node_config(2, 3, None, 3000, ("rpi5", 46))])
    assert parsed == {"partition-id": 2, "num-partitions": 3, "memory-mb": 3000.0, "device": "rpi5",
                      "device-gflops": 46.0}
    assert device_facts(parsed) == {"name": "rpi5", "gflops": 46.0, "memory-mb": 3000.0}
    assert device_facts(parse_config_args([node_config(0, 3, None)])) is None


def test_a_device_profile_gives_a_node_its_budget_and_what_it_declares():
    from simulation.deploy.cli import _parser, device_args

    assert device_args("rpi5", None) == (3000.0, ("rpi5", 46.0))
    assert device_args("rpi5", 1000) == (1000, ("rpi5", 46.0))  # --memory-mb wins
    assert device_args(None, 800) == (800, None)
    args = _parser().parse_args(["local", "d", "--device", "phone-mid", "--device", "laptop"])
    assert args.device == ["phone-mid", "laptop"]


def test_a_host_given_twice_or_loopback_given_again_is_listed_once(tmp_path):
    lay = layout(tmp_path / "fed")
    said: list[str] = []
    steps.init(lay, 1, ["127.0.0.1", "pi.lan", "pi.lan"], 9093, 30, force=False, say=said.append)
    assert json.loads(lay.meta.read_text())["hosts"] == ["localhost", "127.0.0.1", "pi.lan"]
    assert any("valid for localhost, 127.0.0.1, pi.lan;" in line for line in said)
