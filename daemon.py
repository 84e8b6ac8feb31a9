"""dicom-node entry point: parse arguments, load config, configure logging, run a verb, return an exit code."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from node import config as config_mod
from node.config import Config, ConfigError

log = logging.getLogger("dicom-node")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="daemon.py", description="dicom-node: a long-running DICOM node")
    p.add_argument("--config", type=Path, default=config_mod.DEFAULT_CONFIG, help="config file (default etc/node.yaml)")
    p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="override logging.level")
    sub = p.add_subparsers(dest="verb")
    sub.add_parser("run", help="run the node in the foreground until SIGTERM/SIGINT (default)")
    sub.add_parser("check-config", help="validate the config and print the effective configuration")
    echo = sub.add_parser("echo", help="C-ECHO a configured peer and report the round-trip")
    echo.add_argument("peer", help="peer name from the peers section")
    echo.add_argument("--timeout", type=float, default=10.0)
    return p


def configure_logging(level: str, pynetdicom_level: str = "WARNING") -> None:
    """Log to stderr without timestamps' duplication under journald (which adds its own)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("pynetdicom").setLevel(pynetdicom_level)


def _cmd_echo(cfg: Config, peer_name: str, timeout: float) -> int:
    from node.scu import PeerAddress, ScuSettings, echo

    peer = cfg.peers.get(peer_name)
    if peer is None:
        sys.stderr.write(f"Unknown peer {peer_name!r}; configured: {', '.join(cfg.peers)}\n")
        return EXIT_CONFIG
    settings = ScuSettings(calling_ae=cfg.node.ae_title, acse_timeout=timeout, dimse_timeout=timeout,
                           network_timeout=timeout)
    result = echo(PeerAddress(peer.ae_title, peer.host, peer.port), settings)
    if result.ok:
        sys.stdout.write(f"C-ECHO {peer_name} ({peer.ae_title}@{peer.host}:{peer.port}): success in "
                         f"{result.seconds * 1000:.1f} ms\n")
        return EXIT_OK
    sys.stdout.write(f"C-ECHO {peer_name} ({peer.ae_title}@{peer.host}:{peer.port}) failed: {result.error}\n")
    return EXIT_FAILURE


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    verb = args.verb or "run"
    try:
        cfg = config_mod.load(args.config)
    except ConfigError as exc:
        sys.stderr.write(f"{exc}\n")
        return EXIT_CONFIG
    configure_logging(args.log_level or cfg.logging.level, cfg.logging.pynetdicom_level)
    if verb == "check-config":
        sys.stdout.write(f"# {args.config}: valid\n{config_mod.dump(cfg)}")
        return EXIT_OK
    if verb == "echo":
        return _cmd_echo(cfg, args.peer, args.timeout)
    from node.app import run

    log.info("Starting with configuration %s:\n%s", args.config, config_mod.dump(cfg))
    try:
        return run(cfg, config_path=args.config)
    except OSError as exc:
        log.error("Cannot start: %s", exc)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
