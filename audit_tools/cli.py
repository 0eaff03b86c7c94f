"""The ``audit_tools`` command: verify, checkpoint, export, replay and prove a node's log offline.

Exit codes, for every command: 0 the log is valid (or the command did its work), 1 the log is
tampered or corrupt (the first bad seq and the reason are printed), 2 usage or I/O error.
Whatever the bytes on disk, the command prints a message and exits with one of these codes;
it never shows a traceback.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import click

from audit_tools.export import export_bundle
from audit_tools.replay import replay as replay_log
from audit_tools.source import CorruptLog, SourceError, open_source
from audit_tools.verify import (
    Report,
    Step,
    StepFailed,
    declared_keys,
    key_at,
    parse_given_checkpoint,
    verify,
)
from openred.cli_client import printable
from openred.crypto.identity import NodeId, SignKey, from_b64url
from openred.errors import CheckpointError, InvalidKey, OpenRedError, ProofError, TamperedLog
from openred.store import merkle
from openred.store.checkpoint import verify_checkpoint
from openred.store.events import StoredEvent

VALID, TAMPERED, USAGE = 0, 1, 2


def _echo(message: str, *, err: bool = False, nl: bool = True) -> None:
    """Print human text. What verify reports names things from the file under test (schema
    objects, types, rows a replay shows): control characters are shown escaped, never acted on,
    so a crafted log cannot move the cursor and overwrite "TAMPERED" with "VALID"."""
    click.echo(printable(message), err=err, nl=nl)


def _emit_json(data: dict[str, Any]) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


def _fail(code: int, message: str, as_json: bool, **extra: Any) -> NoReturn:
    if as_json:
        _emit_json({"error": message, "exit_code": code, **extra})
    else:
        _echo(f"error: {message}", err=True)
    sys.exit(code)


@contextmanager
def _progress(enabled: bool, label: str) -> Iterator[Callable[[int, int], None] | None]:
    """A progress bar on stderr for long runs at a terminal; nothing otherwise."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    with Progress(
        "[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
        TimeRemainingColumn(), transient=True, auto_refresh=False,
    ) as bar:
        # Refreshed by hand: no refresh thread, so verify may fork its workers safely.
        task = bar.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)
            bar.refresh()

        yield update


def _reader_gone() -> NoReturn:
    """The reader of our output closed it (``verify LOG | head -1``): stop quietly, as tools a
    pipe's reader leaves do, with the I/O code (no verdict was delivered: never 0 or 1).
    What is still buffered for stdout goes nowhere rather than failing again at exit."""
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    sys.exit(USAGE)


@contextmanager
def _guard(as_json: bool) -> Iterator[None]:
    """Map every failure to an exit code and a message; fail closed on the unexpected."""
    try:
        yield
    except SourceError as exc:
        _fail(USAGE, str(exc), as_json)
    except TamperedLog as exc:
        _fail(TAMPERED, f"tampered at seq {exc.seq}: {exc.reason}", as_json, failed_seq=exc.seq)
    except (CorruptLog, StepFailed, CheckpointError, ProofError) as exc:
        _fail(TAMPERED, str(exc), as_json)
    except BrokenPipeError:
        _reader_gone()
    except OSError as exc:
        _fail(USAGE, f"I/O error: {exc}", as_json)
    except RecursionError:
        _fail(TAMPERED, "the log cannot be read as a valid log: JSON nested too deeply", as_json)
    except (OpenRedError, ValueError, KeyError, TypeError, UnicodeError) as exc:
        # Bytes no valid log contains: report them as a damaged log, never as a traceback.
        _fail(TAMPERED, f"the log cannot be read as a valid log: {exc!r}", as_json)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Check an OpenRed signed, hash-chained event log (a node's or the directory's) —
    offline, read-only.

    PATH is a data directory, its openred.db file, or a bundle written by `export`.
    """


def _parse_key(key: str | None, node_id: str | None) -> tuple[SignKey | None, NodeId | None]:
    try:
        return (
            SignKey(from_b64url(key)) if key else None,
            NodeId(node_id) if node_id else None,
        )
    except (ValueError, InvalidKey) as exc:
        raise click.BadParameter(str(exc)) from exc


def _print_step(step: Step) -> None:
    mark = {"ok": "ok", "warning": "WARNING", "failed": "FAILED", "skipped": "skipped"}[
        step.status]
    _echo(f"  {step.number}. {step.title:<40} {mark:<8} {step.detail}")


@main.command("verify")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--node-id", help="Require the log to belong to this node id.")
@click.option("--key", help="Require the genesis signer key (base64url Ed25519 public key).")
@click.option("--checkpoint", "checkpoint_file", type=click.Path(path_type=Path),
              help="A checkpoint saved earlier: prove the log is a consistent extension of it.")
@click.option("--jobs", type=click.IntRange(1, 256), default=None,
              help="Worker processes for signature checks (default: every core).")
@click.option("--no-projections", is_flag=True, help="Skip step 7 (replaying projections).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON report.")
def verify_command(
    path: Path, node_id: str | None, key: str | None, checkpoint_file: Path | None,
    jobs: int | None, no_projections: bool, as_json: bool,
) -> None:
    """Prove the log at PATH intact, in numbered steps; exit 0 valid, 1 tampered, 2 usage/IO."""
    expected_key, expected_id = _parse_key(key, node_id)
    note = None
    if checkpoint_file is not None:
        note = _read_checkpoint_file(checkpoint_file, as_json)
    with _guard(as_json):
        if not as_json:
            _echo(f"Verifying {path}")
        with _progress(not as_json, "verifying") as progress:
            report = verify(
                path, key=expected_key, node_id=expected_id, checkpoint=note, jobs=jobs,
                projections=not no_projections, progress=progress,
                on_step=None if as_json else _print_step,
            )
        _finish(report, as_json)


MAX_CHECKPOINT_FILE = 64 * 1024


def _read_checkpoint_file(path: Path, as_json: bool) -> bytes:
    """The note an auditor saved; anything that is not a well-formed note is a usage error."""
    try:
        with path.open("rb") as f:
            note = f.read(MAX_CHECKPOINT_FILE + 1)
    except OSError as exc:
        _fail(USAGE, f"cannot read checkpoint {path}: {exc.strerror or exc}", as_json)
    if len(note) > MAX_CHECKPOINT_FILE:
        _fail(USAGE, f"checkpoint {path} is not a checkpoint: larger than "
                     f"{MAX_CHECKPOINT_FILE} bytes", as_json)
    try:
        parse_given_checkpoint(note)
    except CheckpointError as exc:
        _fail(USAGE, f"checkpoint {path} is not a valid checkpoint: {exc}", as_json)
    return note


def _finish(report: Report, as_json: bool) -> NoReturn:
    if as_json:
        _emit_json(report.to_json())
    elif report.ok:
        _echo(f"VALID: {report.entries} entries checked; head {report.head}; "
                   f"root {report.root}")
        if report.uncovered:
            label = "WARNING" if report.uncovered == report.entries else "note"
            _echo(f"{label}: {report.uncovered} of {report.entries} entries are covered "
                       "by no stored checkpoint")
        if report.pseudonymized:
            _echo(f"(pseudonymized bundle: order, links, signatures, the key history and "
                       f"checkpoints hold; {report.rewritten} entries' payloads were rewritten, "
                       "so their contents are not proven)")
    else:
        where = f" at seq {report.failed_seq}" if report.failed_seq else ""
        _echo(f"TAMPERED{where}: {report.reason}")
    sys.exit(VALID if report.ok else TAMPERED)


@main.command("checkpoint")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of the note text.")
def checkpoint_command(path: Path, as_json: bool) -> None:
    """Print the newest signed checkpoint of the log at PATH (save it to verify against later)."""
    with _guard(as_json):
        source = open_source(path)
        try:
            count, _top = source.size()
            n = count  # a stray seq past the row count must not size the work (see verify)
            stored = source.checkpoints()
            if not stored:
                _fail(TAMPERED, "the log holds no signed checkpoint", as_json)
            keys = declared_keys(source, n)
            origin = f"openred/{keys[0][1].node_id}"
            size, note = stored[-1]
            cp = verify_checkpoint(note, origin, key_at(keys, size + 1))
        finally:
            source.close()
        if as_json:
            _emit_json({"origin": cp.origin, "size": cp.size, "root": cp.root_hash.hex(),
                        "note": note.decode(), "log_entries": n,
                        "entries_after": max(0, n - cp.size)})
        else:
            _echo(note.decode(), nl=False)
            if n > cp.size:
                _echo(f"note: {n - cp.size} entries were appended after this checkpoint",
                           err=True)


PSEUDONYM_KEY_BYTES = (16, 1024)
"""Bounds of a ``--pseudonym-key-file`` (its bytes are the key)."""


def _pseudonym_key(path: Path, as_json: bool) -> bytes:
    """The key in ``path``: an empty or short file made pseudonyms anyone could recompute from
    the (public) node ids, and a missing one said only "No such file or directory"."""
    low, high = PSEUDONYM_KEY_BYTES
    make = f"make one with `head -c 32 /dev/urandom > {path}` and keep it"
    try:
        with path.open("rb") as f:
            key = f.read(high + 1)
    except OSError as exc:
        _fail(USAGE, f"cannot read the pseudonym key {path}: {exc.strerror or exc}; {make}",
              as_json)
    if not low <= len(key) <= high:
        _fail(USAGE, f"the pseudonym key {path} holds {len(key)}{'+' if len(key) > high else ''}"
                     f" bytes, not {low} to {high}; {make}", as_json)
    return key


@main.command("export")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(path_type=Path),
              help="Bundle file to write (JSON Lines).")
@click.option("--pseudonymize", is_flag=True, help="Replace peers' node ids and keys by keyed "
              "hashes.")
@click.option("--pseudonym-key-file", type=click.Path(path_type=Path),
              help="File whose bytes (16 to 1024) key --pseudonymize, for pseudonyms that stay "
                   "the same from one export to the next (without it: a random key).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
def export_command(
    path: Path, out: Path, pseudonymize: bool, pseudonym_key_file: Path | None, as_json: bool,
) -> None:
    """Verify the log at PATH, then write a self-contained bundle that `verify` checks offline."""
    if out.exists():
        _fail(USAGE, f"{out} exists; export will not overwrite it", as_json)
    key = None
    if pseudonymize:
        key = (_pseudonym_key(pseudonym_key_file, as_json) if pseudonym_key_file
               else secrets.token_bytes(32))
    with _guard(as_json):
        report = verify(path, projections=False)
        if not report.ok:
            where = f" at seq {report.failed_seq}" if report.failed_seq else ""
            _fail(TAMPERED, f"refusing to export a log that does not verify{where}: "
                            f"{report.reason}", as_json)
        source = open_source(path)
        try:
            with _progress(not as_json, "exporting") as progress:
                written = export_bundle(source, report, out, pseudonym_key=key,
                                        progress=progress)
        finally:
            source.close()
        if as_json:
            _emit_json({"out": str(out), "entries": written, "pseudonymized": pseudonymize})
        else:
            _echo(f"Exported {written} entries to {out}"
                       + (" (pseudonymized)" if pseudonymize else ""))


@main.command("replay")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--until", type=click.IntRange(min=1), default=None,
              help="Last seq to apply (default: the whole log).")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Keep the rebuilt state as an OpenRed database at this path.")
@click.option("--rows", type=click.IntRange(min=0), default=20,
              help="Rows shown per table (human output).")
@click.option("--json", "as_json", is_flag=True, help="Print the state as JSON.")
def replay_command(
    path: Path, until: int | None, out: Path | None, rows: int, as_json: bool
) -> None:
    """Rebuild the log's state (a node's peers, tokens, sessions, inbox …; a directory's nodes
    and grants) as of seq UNTIL."""
    if out is not None and out.exists():
        _fail(USAGE, f"{out} exists; replay will not overwrite it", as_json)
    with _guard(as_json):
        source = open_source(path)
        try:
            count, _top = source.size()
            n = count  # a stray seq past the row count must not size the work (see verify)
            if until is not None and until > n:
                _fail(USAGE, f"--until {until} is past the log's {n} entries", as_json)
            with _progress(not as_json, "replaying") as progress:
                state = replay_log(source, until or n, out=out, progress=progress)
        finally:
            source.close()
        if as_json:
            _emit_json({
                "position": state.position,
                "kind": state.kind,
                "tables": {
                    t: [dict(zip(cols, map(_jsonable, r), strict=True)) for r in data]
                    for t, (cols, data) in state.tables.items()
                },
            })
            return
        _echo(f"State of this {state.kind} log as of seq {state.position}"
                   + (f" (saved to {out})" if out else ""))
        for table, (cols, data) in state.tables.items():
            _echo(f"\n{table}: {len(data)} row(s)")
            for row in data[:rows]:
                _echo("  " + "  ".join(f"{c}={_short(v)}" for c, v in zip(cols, row,
                                                                            strict=True)))
            if len(data) > rows:
                _echo(f"  … {len(data) - rows} more")


def _jsonable(value: object) -> object:
    return value.hex() if isinstance(value, bytes) else value


def _short(value: object) -> str:
    text = str(_jsonable(value))
    return text if len(text) <= 24 else text[:21] + "…"


@main.command("prove")
@click.argument("path", type=click.Path(path_type=Path))
@click.argument("seq", type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True, help="Print the proof as JSON.")
def prove_command(path: Path, seq: int, as_json: bool) -> None:
    """Print an inclusion proof of entry SEQ, anchored to the newest signed checkpoint."""
    with _guard(as_json):
        source = open_source(path)
        try:
            count, _top = source.size()
            n = count  # a stray seq past the row count must not size the work (see verify)
            if seq > n:
                _fail(USAGE, f"no entry {seq}: the log has {n} entries", as_json)
            keys = declared_keys(source, n)
            origin = f"openred/{keys[0][1].node_id}"
            anchor = [(s, note) for s, note in source.checkpoints() if s >= seq]
            size, note = anchor[0] if anchor else (n, None)
            entries = [e for e in source.rows(1, size) if isinstance(e, StoredEvent)]
        finally:
            source.close()
        if len(entries) != size:
            raise TamperedLog(len(entries) + 1, "entries are missing below the proof's tree size")
        hashes = [e.entry_hash for e in entries]
        path_hashes = merkle.inclusion_proof(seq - 1, hashes)
        if note is not None:
            root = verify_checkpoint(note, origin, key_at(keys, size + 1)).root_hash
        else:
            root = merkle.root_from_entry_hashes(hashes)
        # The proof must verify against the signed root before it is handed out.
        merkle.verify_inclusion(seq - 1, size, hashes[seq - 1], path_hashes, root)
        data = {
            "origin": origin, "seq": seq, "leaf_index": seq - 1, "tree_size": size,
            "entry_hash": hashes[seq - 1].hex(), "root": root.hex(),
            "proof": [h.hex() for h in path_hashes],
            "checkpoint": note.decode() if note else None,
        }
        if as_json:
            _emit_json(data)
            return
        _echo(f"Inclusion proof for entry {seq} of {origin}")
        _echo(f"  leaf index  {seq - 1} (leaf hash = SHA-256(0x00 ‖ entry_hash))")
        _echo(f"  entry_hash  {data['entry_hash']}")
        _echo(f"  tree size   {size}")
        _echo(f"  root        {data['root']}")
        for i, h in enumerate(path_hashes):
            _echo(f"  path[{i}]     {h.hex()}")
        if note is None:
            _echo("  anchored to: the current tree (no signed checkpoint covers this entry)")
        else:
            _echo("  anchored to the signed checkpoint:")
            for line in note.decode().splitlines():
                _echo(f"    {line}")


def run() -> None:
    """Entry point that also turns Ctrl-C into a clean exit."""
    try:
        main(standalone_mode=True)
    except KeyboardInterrupt:
        _echo("interrupted", err=True)
        os._exit(USAGE)


if __name__ == "__main__":
    run()
