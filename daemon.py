"""dicom-node entry point: parse arguments, load config, configure logging, run a verb, return an exit code."""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from node import config as config_mod
from node.config import Config, ConfigError

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="daemon.py", description="dicom-node: a long-running DICOM node")
    p.add_argument("--config", type=Path, default=config_mod.DEFAULT_CONFIG, help="config file (default etc/node.yaml)")
    p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="override logging.level")
    # The same options after the verb (`daemon.py run --config X`): SUPPRESS keeps the main parser's value
    # unless the option is given there.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, default=argparse.SUPPRESS, help="config file (default etc/node.yaml)")
    common.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], default=argparse.SUPPRESS,
                        help="override logging.level")
    sub = p.add_subparsers(dest="verb")
    sub.add_parser("run", parents=[common], help="run the node in the foreground until SIGTERM/SIGINT (default)")
    sub.add_parser("check-config", parents=[common], help="validate the config and print the effective configuration")
    echo = sub.add_parser("echo", parents=[common], help="C-ECHO a configured peer and report the round-trip")
    echo.add_argument("peer", help="peer name from the peers section")
    echo.add_argument("--timeout", type=float, default=10.0)
    # Requests: query a peer, write a request file, show what the database says.
    find = sub.add_parser("find", parents=[common], help="STUDY-level C-FIND on a peer; prints the matching studies")
    find.add_argument("peer", help="peer name from the peers section")
    key = find.add_mutually_exclusive_group(required=True)
    key.add_argument("--patient-id")
    key.add_argument("--accession")
    find.add_argument("--study-date", help="YYYYMMDD or YYYYMMDD-YYYYMMDD")
    find.add_argument("--modality")
    req = sub.add_parser("request", parents=[common], help="write a well-formed request file into the inbox")
    req.add_argument("--accession", action="append", required=True, help="repeat for several studies")
    req.add_argument("--peer")
    req.add_argument("--name", help="request name (default: request-<UTC time>)")
    req.add_argument("--output", action="append", choices=["excel", "nifti"], help="default: both")
    req.add_argument("--priority", type=int)
    req.add_argument("--not-before", help="ISO date-time")
    status = sub.add_parser("status", parents=[common], help="listener, peers, requests and studies by state, last errors")
    status.add_argument("--no-echo", action="store_true", help="do not C-ECHO the peers")
    cancel = sub.add_parser("cancel", parents=[common], help="cancel a request (by name or id); the running node stops it")
    cancel.add_argument("request", help="the request's name (as in its status file) or its number")
    user = sub.add_parser("user", parents=[common], help="web users: add, passwd, remove, list, token")
    user.add_argument("action", choices=["add", "passwd", "remove", "list", "token"])
    user.add_argument("name", nargs="?")
    user.add_argument("--role", choices=["viewer", "operator"], default="viewer", help="for add (default viewer)")
    user.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    user.add_argument("--label", default="", help="for token: what the token is for")
    return p


def configure_logging(level: str, pynetdicom_level: str = "WARNING") -> None:
    """Log to stderr without timestamps' duplication under journald (which adds its own)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("pynetdicom").setLevel(pynetdicom_level)
    # apscheduler logs every run of the half-second dispatch job at INFO.
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    # Dask (processing.executor: dask) logs every worker start and task at INFO.
    logging.getLogger("distributed").setLevel(logging.WARNING)


def _cmd_echo(cfg: Config, peer_name: str, timeout: float) -> int:
    from node.pull.scu import PeerAddress, ScuSettings, echo

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


def _cmd_find(cfg: Config, args: argparse.Namespace) -> int:
    from node.pull.requests import StudyQuery
    from node.pull.scheduler import peer_find
    from node.pull.scu import ScuError

    if args.peer not in cfg.peers:
        sys.stderr.write(f"Unknown peer {args.peer!r}; configured: {', '.join(cfg.peers)}\n")
        return EXIT_CONFIG
    query = StudyQuery(args.accession, args.patient_id, args.study_date, args.modality)
    try:
        studies = peer_find(cfg, args.peer, query.dicom_query())
    except ScuError as exc:
        sys.stderr.write(f"C-FIND on {args.peer} failed ({exc.kind}): {exc.reason}\n")
        return EXIT_FAILURE
    for s in studies:
        modalities = "/".join(s.get("ModalitiesInStudy") or [])
        sys.stdout.write(f"{s.get('StudyInstanceUID')}  patient {s.get('PatientID')}  accession {s.get('AccessionNumber')}  "
                         f"date {s.get('StudyDate')}  {modalities}  series {s.get('NumberOfStudyRelatedSeries')}  "
                         f"instances {s.get('NumberOfStudyRelatedInstances')}  {s.get('StudyDescription') or ''}\n")
    sys.stdout.write(f"{len(studies)} stud{'y' if len(studies) == 1 else 'ies'}\n")
    return EXIT_OK


def _cmd_request(cfg: Config, args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from node.pull import requests
    from node.pull.inbox import write_request

    name = args.name or datetime.now(UTC).strftime("request-%Y%m%dT%H%M%SZ")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", name):
        sys.stderr.write(f"--name {name!r}: use letters, digits, '.', '_' and '-' (it becomes a file name)\n")
        return EXIT_CONFIG
    text = requests.render(args.accession, args.peer, args.output, args.priority, args.not_before)
    try:
        requests.parse(f"{name}.yaml", text.encode(), list(cfg.peers), cfg.requests.max_file_bytes)
    except requests.RequestError as exc:
        sys.stderr.write(f"Not a valid request:\n{exc}\n")
        return EXIT_CONFIG
    cfg.paths.inbox.mkdir(parents=True, exist_ok=True)
    path = write_request(cfg.paths.inbox, name, text)
    sys.stdout.write(f"{path}\n")
    return EXIT_OK


def _cmd_status(cfg: Config, echo_peers: bool) -> int:
    from node.ops.status import report

    report(cfg, sys.stdout.write, echo_peers=echo_peers)
    return EXIT_OK


def _cmd_cancel(cfg: Config, which: str) -> int:
    import getpass

    from node.pull.scheduler import cancel_request, find_request
    from node.store.store import Store

    store = Store(cfg.paths)
    try:
        found = find_request(store, which)
        if found is None:
            sys.stderr.write(f"No request named {which!r}\n")
            return EXIT_FAILURE
        rid, name, state = found
        if not cancel_request(store, rid, f"{getpass.getuser()} (command line)"):
            sys.stderr.write(f"Request {name} is {state} (or already cancelled): nothing to cancel\n")
            return EXIT_FAILURE
    finally:
        store.close()
    sys.stdout.write(f"Request {name} cancelled: waiting work dropped; a series being moved finishes first\n")
    return EXIT_OK


def _cmd_user(cfg: Config, args: argparse.Namespace) -> int:
    import getpass

    from node.web.auth import UserError, Users

    users = Users(cfg.users_file)
    if args.action == "list":
        for name, role in sorted(users.names().items()):
            sys.stdout.write(f"{name}\t{role}\n")
        return EXIT_OK
    if not args.name:
        sys.stderr.write(f"user {args.action}: give the user name\n")
        return EXIT_CONFIG
    try:
        if args.action == "remove":
            if not users.remove_user(args.name):
                sys.stderr.write(f"No user {args.name!r}\n")
                return EXIT_FAILURE
            sys.stdout.write(f"User {args.name} removed (their API tokens too)\n")
            return EXIT_OK
        if args.action == "token":
            sys.stdout.write(users.new_token(args.name, args.label) + "\n")
            sys.stderr.write("Shown once: keep it like a password (Authorization: Bearer <token>)\n")
            return EXIT_OK
        known = users.names()
        if args.action == "passwd" and args.name not in known:
            sys.stderr.write(f"No user {args.name!r} (add it first)\n")
            return EXIT_FAILURE
        if args.password_stdin:
            password = sys.stdin.readline().rstrip("\n")
        else:
            password = getpass.getpass(f"Password for {args.name}: ")
            if getpass.getpass("Again: ") != password:
                sys.stderr.write("The two passwords differ\n")
                return EXIT_CONFIG
        role = args.role if args.action == "add" else known[args.name]
        users.set_user(args.name, password, role)
    except UserError as exc:
        sys.stderr.write(f"{exc}\n")
        return EXIT_CONFIG
    sys.stdout.write(f"User {args.name} ({role}) saved in {cfg.users_file}\n")
    return EXIT_OK


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
    if verb == "find":
        return _cmd_find(cfg, args)
    if verb == "request":
        return _cmd_request(cfg, args)
    if verb == "status":
        return _cmd_status(cfg, not args.no_echo)
    if verb == "cancel":
        return _cmd_cancel(cfg, args.request)
    if verb == "user":
        return _cmd_user(cfg, args)
    from node.app import run

    log.info("Starting with configuration %s:\n%s", args.config, config_mod.dump(cfg))
    try:
        return run(cfg, config_path=args.config)
    except OSError as exc:
        log.error("Cannot start: %s", exc)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
