"""``sleepagent snapshots``: list, show, diff, export, plot, purge and erase a store's snapshots.

A store is opened only if it exists (a mistyped path is an error, not a new empty database), and
every typed store error is one line. Commands that write files check the path first and write
through a temporary file, so a refused command leaves nothing behind.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.table import Table

from ._common import console, fail, new_file, new_or_existing_dir

if TYPE_CHECKING:
    from collections.abc import Callable

    from ..storage import SnapshotStore

__all__ = ["app"]

app = typer.Typer(help="Inspect and manage session snapshots in a store.", no_args_is_help=True)

StoreOpt = Annotated[str, typer.Option("--store", help="store URL, e.g. sqlite:///sleepagent.db")]
TenantOpt = Annotated[str, typer.Option(help="tenant the sessions belong to")]
T = TypeVar("T")


def _open_store(url: str) -> SnapshotStore:
    from ..storage import SnapshotStore

    # an existing store only: a mistyped path must be an error, not a new empty database
    return _store_call(lambda: SnapshotStore(url, create=False))


def _store_call(fn: Callable[[], T]) -> T:
    """Run a store operation; a typed error becomes one clear line and exit code 2."""
    from ..errors import SleepAgentError

    try:
        return fn()
    except SleepAgentError as e:
        raise fail(str(e)) from None


def _when(t: float | None) -> str:
    import datetime as dt

    return "never" if t is None else dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


@app.command("list")
def snapshots_list(store: StoreOpt = "sqlite:///sleepagent.db", tenant: TenantOpt = "default") -> None:
    """Sessions and their snapshots."""
    st = _open_store(store)
    table = Table(title=f"sessions of tenant {tenant!r} in {store}")
    for col in ("session", "retention", "snapshot", "created (UTC)", "expires", "tokens", "loops", "bytes"):
        table.add_column(col)
    for sess in _store_call(lambda: st.list_sessions(tenant=tenant)):
        snaps = _store_call(functools.partial(st.list_snapshots, sess.id, tenant=tenant))
        if not snaps:
            table.add_row(sess.id, sess.policy.retention, "-", _when(sess.created_at), "-", "-", "-", "-")
        for snap in snaps:
            table.add_row(sess.id, sess.policy.retention, str(snap.id), _when(snap.created_at), _when(snap.expires_at),
                          str(snap.tokens_consolidated), str(snap.loops), str(snap.size))
    console.print(table)


@app.command("show")
def snapshots_show(
    snapshot_id: int, store: StoreOpt = "sqlite:///sleepagent.db", tenant: TenantOpt = "default"
) -> None:
    """Per-layer fast-weight norms, effective rank, bytes; the policy and expiry."""
    from ..snapshot_view import layer_stats

    st = _open_store(store)
    info, payload = _store_call(lambda: st.load(snapshot_id, tenant=tenant))
    sess = _store_call(lambda: st.get_session(info.session_id, tenant=tenant))
    console.print(
        f"snapshot {info.id} of session {info.session_id!r}: {info.size} bytes, {info.tokens_consolidated} tokens "
        f"consolidated with N={info.loops}, created {_when(info.created_at)}, expires {_when(info.expires_at)}, "
        f"retention {sess.policy.retention}, sha256 {info.sha256[:16]}…, model {info.fingerprint[:16]}…"
    )
    table = Table(title="fast weights per GDN layer")
    for col in ("layer", "shape", "‖S‖_F", "effective rank", "bytes"):
        table.add_column(col, justify="right")
    for row in _store_call(lambda: layer_stats(payload)):
        table.add_row(str(row["layer"]), "×".join(map(str, row["shape"])), f"{row['norm']:.4f}",
                      f"{row['effective_rank']:.2f}", str(row["bytes"]))
    console.print(table)


@app.command("diff")
def snapshots_diff(a: int, b: int, store: StoreOpt = "sqlite:///sleepagent.db", tenant: TenantOpt = "default") -> None:
    """Compare two snapshots layer by layer."""
    from ..snapshot_view import diff_stats

    st = _open_store(store)
    _, pa = _store_call(lambda: st.load(a, tenant=tenant))
    _, pb = _store_call(lambda: st.load(b, tenant=tenant))
    table = Table(title=f"snapshot {a} vs {b}")
    for col in ("layer", "‖A−B‖_F", "relative", "cosine"):
        table.add_column(col, justify="right")
    for row in _store_call(lambda: diff_stats(pa, pb)):
        table.add_row(str(row["layer"]), f"{row['diff_norm']:.4f}", f"{row['relative']:.4f}", f"{row['cosine']:.4f}")
    console.print(table)


@app.command("export")
def snapshots_export(
    snapshot_id: int,
    out: Annotated[str, typer.Option(help="file to write (safetensors)")],
    store: StoreOpt = "sqlite:///sleepagent.db",
    tenant: TenantOpt = "default",
) -> None:
    """Write a snapshot's verified payload to a safetensors file; the export is recorded in the
    store's audit trail, so a read-only store cannot export."""
    path = new_file(out)
    st = _open_store(store)
    if st.read_only:  # the audit row could not be written: refuse before anything leaves the store
        raise fail(f"the store at {store} is read-only: an export is recorded in its audit trail, so it needs a "
                   "store this process may write")
    _, payload = _store_call(lambda: st.load(snapshot_id, tenant=tenant))
    _write_then_record(path, payload, lambda: st.record("export", tenant, None, snapshot=snapshot_id, path=str(path)))
    console.print(f"wrote {len(payload)} bytes to {path}")


def _write_then_record(path: Path, payload: bytes, record: Callable[[], Any]) -> None:
    """Write ``payload`` to a temporary file beside ``path``, record the export, then rename: a
    failure at any step leaves neither a partial file nor an unrecorded one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(payload)
        _store_call(record)
        os.replace(tmp, path)
    except OSError as e:
        raise fail(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        tmp.unlink(missing_ok=True)


@app.command("purge")
def snapshots_purge(store: StoreOpt = "sqlite:///sleepagent.db") -> None:
    """Delete expired snapshots, and sessions whose lease ran out, for real (every write does too)."""
    st = _open_store(store)
    n = st.purged_on_open + _store_call(st.purge)  # opening a store already sweeps it
    console.print(f"purged {n} expired snapshot(s)")


@app.command("erase")
def snapshots_erase(
    session_id: str, store: StoreOpt = "sqlite:///sleepagent.db", tenant: TenantOpt = "default"
) -> None:
    """Erase a session and all its snapshots for real; prints the receipt."""
    st = _open_store(store)
    r = _store_call(lambda: st.erase(session_id, tenant=tenant))
    console.print(
        f"erased session {r.session_id!r}: {r.snapshots} snapshot(s), {r.bytes} bytes; verified: {r.verified}"
    )


@app.command("plot")
def snapshots_plot(
    snapshot_id: int,
    out: Annotated[str, typer.Option(help="directory for the PNG files (created if missing)")] = ".",
    store: StoreOpt = "sqlite:///sleepagent.db",
    tenant: TenantOpt = "default",
) -> None:
    """PNG heat-maps of each layer's fast weights and a per-layer norm chart."""
    from ..snapshot_view import plot_snapshot

    out_dir = new_or_existing_dir(out)
    st = _open_store(store)
    _, payload = _store_call(lambda: st.load(snapshot_id, tenant=tenant))
    try:
        paths = _store_call(lambda: plot_snapshot(payload, out_dir, name=f"snapshot{snapshot_id}"))
    except OSError as e:
        raise fail(f"cannot write the plots into {out}: {e.strerror or e}") from None
    for path in paths:
        console.print(f"wrote {path}")
