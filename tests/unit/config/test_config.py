"""Config loading: the shipped file is valid, every problem is reported with its location, env overrides apply."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from daemon import main
from node import config as config_mod
from node.config import ConfigError

REPO = Path(__file__).resolve().parents[3]
SHIPPED = REPO / "etc" / "node.yaml"


def shipped() -> dict:
    return yaml.safe_load(SHIPPED.read_text())


def problems_of(data: object) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config_mod.parse(yaml.safe_dump(data), source="t", environ={})
    return info.value.problems


def test_the_shipped_config_is_valid_and_listens_on_loopback():
    cfg = config_mod.load(SHIPPED, environ={})
    assert cfg.node.ae_title == "DICOMNODE"
    assert cfg.node.bind == "127.0.0.1"
    assert cfg.node.port == 11112
    assert cfg.default_peer.name == "pacs"
    assert cfg.default_peer.port == 4242


def test_every_problem_is_reported_at_once_with_its_location():
    data = shipped()
    data["peers"]["pacs"]["port"] = "4242x"
    data["node"]["max_associations"] = 0
    data["paths"]["outbox"] = 7
    problems = problems_of(data)
    assert any(p.startswith("At 'peers.pacs.port':") for p in problems), problems
    assert any(p.startswith("At 'node.max_associations':") for p in problems), problems
    assert any(p.startswith("At 'paths.outbox':") for p in problems), problems
    assert len(problems) == 3


def test_the_shipped_config_receives_in_two_processes_and_bad_counts_are_refused_with_their_location():
    assert config_mod.load(SHIPPED, environ={}).node.receiver_processes == 2
    for bad in (0, 65, "two", 1.5):
        data = shipped()
        data["node"]["receiver_processes"] = bad
        (problem,) = problems_of(data)
        assert problem.startswith("At 'node.receiver_processes':"), problem
    data = shipped()
    del data["node"]["receiver_processes"]
    assert config_mod.parse(yaml.safe_dump(data), source="test", environ={}).node.receiver_processes == 1


def test_an_unknown_key_is_named_with_its_section():
    data = shipped()
    data["node"]["ae_titel"] = "TYPO"
    (problem,) = problems_of(data)
    assert problem.startswith("At 'node':") and "ae_titel" in problem


def test_missing_required_sections_are_reported():
    problems = problems_of({"node": {"ae_title": "X", "port": 1}})
    assert any("'paths' is a required property" in p for p in problems)
    assert any("'peers' is a required property" in p for p in problems)


@pytest.mark.parametrize(
    ("title", "fragment"),
    [("", "empty"), ("A" * 17, "longer than 16"), ("BAD\\AE", "backslash"), ("ÄE", "non-ASCII")],
)
def test_invalid_ae_titles_are_refused_with_the_reason(title, fragment):
    data = shipped()
    data["peers"]["pacs"]["ae_title"] = title
    (problem,) = problems_of(data)
    assert problem.startswith("At 'peers.pacs.ae_title':") and fragment in problem


def test_allowed_hosts_must_be_addresses_or_networks():
    data = shipped()
    data["security"]["allowed_hosts"] = ["10.0.0.0/8", "not-an-ip"]
    (problem,) = problems_of(data)
    assert problem.startswith("At 'security.allowed_hosts[1]':")


def test_low_water_above_high_water_is_refused():
    data = shipped()
    data["storage"] = {"disk_high_water_pct": 80, "disk_low_water_pct": 90}
    (problem,) = problems_of(data)
    assert "disk_low_water_pct" in problem


def test_tls_enabled_without_a_certificate_is_refused():
    data = shipped()
    data["node"]["tls"] = {"enabled": True}
    problems = problems_of(data)
    assert "At 'node.tls.certificate': required when TLS is enabled" in problems
    assert "At 'node.tls.private_key': required when TLS is enabled" in problems


def test_defaults_are_filled_in_when_keys_are_omitted():
    data = {
        "node": {"ae_title": "N", "port": 1104},
        "paths": {"inbox": "i", "outbox": "o", "var": "v"},
        "peers": {"p": {"ae_title": "P", "host": "127.0.0.1", "port": 104}},
    }
    cfg = config_mod.parse(yaml.safe_dump(data), environ={}, base=Path("/srv/node"))
    assert cfg.node.bind == "127.0.0.1"
    assert cfg.node.max_associations == 16
    assert cfg.storage.disk_high_water_pct == 95
    assert cfg.paths.var == Path("/srv/node/v")
    assert cfg.peers["p"].max_moves == 1
    assert cfg.effective["security"]["allowed_calling_aes"] == []


def test_environment_overrides_apply_and_are_validated():
    text = SHIPPED.read_text()
    cfg = config_mod.parse(text, environ={"DICOMNODE__NODE__PORT": "11113", "DICOMNODE__PEERS__PACS__HOST": "10.1.1.1"})
    assert cfg.node.port == 11113
    assert cfg.peers["pacs"].host == "10.1.1.1"
    with pytest.raises(ConfigError) as info:
        config_mod.parse(text, environ={"DICOMNODE__NODE__PORT": "70000"})
    assert info.value.problems[0].startswith("At 'node.port':")


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"node: [unclosed\n", "YAML syntax error"),
        (b"\x00\x01\x02binary", "NUL bytes"),
        (b"\xff\xfe\xfa", "not UTF-8"),
        (b"- just\n- a list\n", "expected a mapping"),
        (b"", "'node' is a required property"),
    ],
)
def test_malformed_files_give_a_clear_error(tmp_path, content, fragment):
    path = tmp_path / "node.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        config_mod.load(path, environ={})
    assert any(fragment in p for p in info.value.problems), info.value.problems


def test_a_missing_or_huge_file_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        config_mod.load(tmp_path / "absent.yaml", environ={})
    huge = tmp_path / "huge.yaml"
    huge.write_bytes(b"#" * (config_mod.MAX_CONFIG_BYTES + 1))
    with pytest.raises(ConfigError, match="byte limit"):
        config_mod.load(huge, environ={})


def test_check_config_prints_the_effective_config_and_exits_zero(capsys):
    assert main(["--config", str(SHIPPED), "check-config"]) == 0
    out = capsys.readouterr().out
    printed = yaml.safe_load(out)
    assert printed["node"]["ae_title"] == "DICOMNODE"
    assert printed["node"]["max_pdu"] == 262144  # a default, filled in


def test_check_config_on_a_bad_file_exits_two_and_names_the_location(tmp_path, capsys):
    data = shipped()
    data["peers"]["pacs"]["port"] = -1
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    assert main(["--config", str(bad), "check-config"]) == 2
    assert "At 'peers.pacs.port':" in capsys.readouterr().err


def test_echo_to_an_unknown_peer_is_a_config_error(capsys):
    assert main(["--config", str(SHIPPED), "echo", "nosuchpeer"]) == 2
    assert "Unknown peer 'nosuchpeer'" in capsys.readouterr().err


def test_a_broken_tag_template_and_broken_mr_clean_rules_fail_check_config_with_both_locations(tmp_path, capsys):
    templates = tmp_path / "tags"
    templates.mkdir()
    (templates / "default.json").write_text('{"modality": "*", "attributes": [{"tag": "NotAKeyword"}]}')
    rules = tmp_path / "rules.json"
    rules.write_text('{"version": 1}')
    data = shipped()
    data["processing"] = {"templates_dir": str(templates), "mr_clean_config": str(rules)}
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["--config", str(path), "check-config"]) == 2
    err = capsys.readouterr().err
    assert "At 'processing.templates_dir':" in err
    assert "At 'processing.mr_clean_config':" in err


def test_a_nifti_name_template_with_an_unknown_keyword_is_refused_when_the_config_loads():
    data = shipped()
    data["nifti"] = {"name_template": "<SeriesNumber>_<NoSuchKeyword>"}
    assert problems_of(data) == ["At 'nifti': nifti.name_template: <NoSuchKeyword> is not a DICOM keyword"]


def test_the_nifti_section_is_typed_with_the_schema_defaults():
    cfg = config_mod.parse(yaml.safe_dump({**shipped(), "nifti": {"compress": False}}), source="t", environ={})
    assert isinstance(cfg.nifti, config_mod.NiftiOptions)
    assert cfg.nifti.compress is False
    assert cfg.nifti.max_name_len == config_mod.SCHEMA["properties"]["nifti"]["properties"]["max_name_len"]["default"]
    assert config_mod.NiftiOptions() == config_mod.parse(yaml.safe_dump(shipped()), source="t", environ={}).nifti


def test_requiring_client_certificates_without_a_ca_file_is_refused():
    data = shipped()
    data["node"]["tls"] = {"enabled": True, "certificate": "c.pem", "private_key": "k.pem",
                           "require_client_certificate": True}
    assert any(p.startswith("At 'node.tls.ca_file': required when require_client_certificate") for p in problems_of(data))


def test_a_request_time_window_with_a_trailing_newline_is_refused():
    data = shipped()
    data["peers"]["pacs"]["windows"] = [{"start": "20:00\n", "end": "06:00"}]
    assert any("windows" in p for p in problems_of(data))


def test_the_old_health_listener_keys_are_refused_with_where_they_moved() -> None:
    from node import config as config_mod

    text = "node: {ae_title: A, port: 11112}\npeers: {pacs: {ae_title: P, host: 127.0.0.1, port: 4242}}\n" \
           "paths: {inbox: i, outbox: o, var: v}\nhealth: {port: 9200, stall_after_s: 60}\n"
    with pytest.raises(config_mod.ConfigError) as caught:
        config_mod.parse(text, "old.yaml", environ={})
    assert "At 'health.port': moved to 'web.port'" in str(caught.value)


def test_bad_web_qc_and_workbook_values_are_refused_with_their_locations() -> None:
    from node import config as config_mod

    text = ("node: {ae_title: A, port: 11112}\npeers: {pacs: {ae_title: P, host: 127.0.0.1, port: 4242}}\n"
            "paths: {inbox: i, outbox: o, var: v}\n"
            "web: {port: 70000, max_upload_mb: 0, session_hours: -1}\n"
            "qc: {thresholds: {CT: {clip_high_fraction: 2, bogus: 1}}}\n"
            "processing: {workbook_headers: camel, metadata_rows: study}\n"
            "nifti: {philips_scaling: guess}\n")
    with pytest.raises(config_mod.ConfigError) as caught:
        config_mod.parse(text, "bad.yaml", environ={})
    problems = "\n".join(caught.value.problems)
    for where in ("web.port", "web.max_upload_mb", "web.session_hours", "qc.thresholds.CT.clip_high_fraction",
                  "qc.thresholds.CT", "processing.workbook_headers", "processing.metadata_rows",
                  "nifti.philips_scaling"):
        assert f"At '{where}'" in problems, (where, problems)
