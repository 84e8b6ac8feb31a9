"""The `status` picture for a person: listener, peers, requests and studies by state, and the last errors."""

from __future__ import annotations

from collections.abc import Callable

from node.config import Config
from node.ops.health import tcp_listening_check
from node.store import schema
from node.store import state as study_state
from node.store.store import Store

Write = Callable[[str], object]


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{state} {count}" for state, count in sorted(counts.items())) or "none"


def report(cfg: Config, write: Write, echo_peers: bool = True, last: int = 5) -> None:
    """Write the status report line by line (read-only: the database is only queried)."""
    from node.pull.inbox import status_document
    from node.pull.scheduler import recent_request_problems, recent_requests, request_counts

    n = cfg.node
    probe = "127.0.0.1" if n.bind in ("0.0.0.0", "::") else n.bind  # noqa: S104 - mapping a wildcard to loopback
    listening, detail = tcp_listening_check(probe, n.port)
    write(f"node {n.ae_title} on {n.bind}:{n.port}: {'listening' if listening else 'NOT listening'} ({detail})\n")
    if echo_peers:
        from node.pull.scu import PeerAddress, ScuSettings, echo

        for name, peer in cfg.peers.items():
            settings = ScuSettings(calling_ae=n.ae_title, acse_timeout=3, dimse_timeout=3, network_timeout=3)
            result = echo(PeerAddress(peer.ae_title, peer.host, peer.port), settings)
            state = f"reachable ({result.seconds * 1000:.0f} ms)" if result.ok else f"NOT reachable: {result.error}"
            write(f"peer {name} {peer.ae_title}@{peer.host}:{peer.port}: {state}\n")
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
        errors = study_state.recent_failures(store, last)
        quarantined = store.recent_quarantine(last)
        pulls = recent_request_problems(store, last)
        write("last errors:" + ("" if errors or quarantined or pulls else " none") + "\n")
        for when, text in pulls:
            write(f"  {when} {text}\n")
        for when, uid, reason in errors:
            write(f"  {when} study {uid} failed: {reason}\n")
        for when, ae, reason in quarantined:
            write(f"  {when} quarantined a dataset from {ae or '?'}: {reason}\n")
    finally:
        store.close()
