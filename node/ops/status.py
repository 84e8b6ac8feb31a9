"""The `status` picture for a person: listener, peers, requests and studies by state, and the last errors."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from node.config import Config
from node.ops.health import tcp_listening_check
from node.store import schema
from node.store import state as study_state
from node.store.store import Store

Write = Callable[[str], object]


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{state} {count}" for state, count in sorted(counts.items())) or "none"


@dataclass(frozen=True)
class PeerEcho:
    name: str
    ae_title: str
    host: str
    port: int
    ok: bool
    detail: str  # the round trip, or why it failed


def peer_echoes(cfg: Config) -> list[PeerEcho]:
    """C-ECHO every configured peer with short timeouts (a person is waiting)."""
    from node.pull.scu import PeerAddress, ScuSettings, echo

    out = []
    for name, peer in cfg.peers.items():
        settings = ScuSettings(calling_ae=cfg.node.ae_title, acse_timeout=3, dimse_timeout=3, network_timeout=3)
        result = echo(PeerAddress(peer.ae_title, peer.host, peer.port), settings)
        detail = f"{result.seconds * 1000:.0f} ms" if result.ok else str(result.error)
        out.append(PeerEcho(name, peer.ae_title, peer.host, peer.port, result.ok, detail))
    return out


def last_errors(store: Store, last: int) -> list[tuple[str, str]]:
    """(when, what) of the last failed pulls, failed studies and quarantined datasets, newest first."""
    from node.pull.scheduler import recent_request_problems

    errors = list(recent_request_problems(store, last))
    errors += [(w, f"study {u} failed: {r}") for w, u, r in study_state.recent_failures(store, last)]
    errors += [(w, f"quarantined a dataset from {ae or '?'}: {r}") for w, ae, r in store.recent_quarantine(last)]
    return sorted(errors, key=lambda e: str(e[0]), reverse=True)


def report(cfg: Config, write: Write, echo_peers: bool = True, last: int = 5) -> None:
    """Write the status report line by line (read-only: the database is only queried)."""
    from node.pull.inbox import status_document
    from node.pull.scheduler import recent_requests, request_counts

    n = cfg.node
    probe = "127.0.0.1" if n.bind in ("0.0.0.0", "::") else n.bind  # noqa: S104 - mapping a wildcard to loopback
    listening, detail = tcp_listening_check(probe, n.port)
    write(f"node {n.ae_title} on {n.bind}:{n.port}: {'listening' if listening else 'NOT listening'} ({detail})\n")
    if echo_peers:
        for p in peer_echoes(cfg):
            state = f"reachable ({p.detail})" if p.ok else f"NOT reachable: {p.detail}"
            write(f"peer {p.name} {p.ae_title}@{p.host}:{p.port}: {state}\n")
    if not cfg.paths.database_url and not cfg.paths.database.exists():
        write(f"database {cfg.paths.database}: none yet (the node has not run with these paths)\n")
        return
    store = Store(cfg.paths, read_only=True)
    try:
        if store.schema_version < schema.SCHEMA_VERSION:
            write(f"database {cfg.paths.database}: from an older version; start the node once to migrate it\n")
            return
        write(f"studies: {_counts(study_state.counts(store))}\n")
        write(f"requests: {_counts(request_counts(store))}\n")
        for rid in recent_requests(store, 20):
            doc = status_document(store, int(rid))
            if doc is None:
                continue
            reason = f"  ({doc['reason']})" if doc.get("reason") else ""
            write(f"  request {doc['request']}: {doc['state']}  peer {doc['peer']}{reason}\n")
            for s in doc["studies"]:
                extra = s.get("outbox") or s.get("reason") or ""
                write(f"    {s['study_uid']}  accession {s['accession']}  {s['state']}  {extra}\n")
        errors = last_errors(store, last)
        write("last errors:" + ("" if errors else " none") + "\n")
        for when, text in errors:
            write(f"  {when} {text}\n")
    finally:
        store.close()
