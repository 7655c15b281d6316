"""``search dashboard``: optuna-dashboard on 127.0.0.1 (unless asked otherwise)."""

from __future__ import annotations

import sys

from search.store import Storage


def launch(*, study: str | None, storage: Storage | str | None, host: str, port: int) -> int:
    """Serve optuna-dashboard on ``study``'s storage, else on ``storage`` (a ``Storage``, or
    the URL ``--storage``, resolved here once)."""
    from optuna_dashboard import run_server

    if study:
        from search.study.lookup import load_stored

        _, store = load_stored(study, storage)
    else:
        store = Storage.open(storage)
    if not 0 < port < 65536:
        raise ValueError(f"--port must be in 1..65535, but got {port}")
    _check_port_free(host, port)
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"warning: serving on {host}: anyone who can reach it sees the study", file=sys.stderr
        )
    print(
        f"optuna-dashboard for {store.masked} at http://{host}:{port}/",
        file=sys.stderr,
    )
    run_server(store.rdb, host=host, port=port, artifact_store=store.artifact_store())
    return 0


def _check_port_free(host: str, port: int) -> None:
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise ValueError(
                f"cannot serve on {host}:{port} ({exc.strerror}); pass another --port"
            ) from None
