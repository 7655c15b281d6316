"""``search dashboard``: optuna-dashboard on 127.0.0.1 (unless asked otherwise)."""

from __future__ import annotations

import sys

from search.store import storage as storage_mod


def launch(*, study: str | None, storage: str | None, host: str, port: int) -> int:
    from optuna_dashboard import run_server

    if study:
        from search.study.lookup import load_stored

        _, url = load_stored(study, storage)
    else:
        url = storage_mod.resolve_url(storage)
    if not 0 < port < 65536:
        raise ValueError(f"--port must be in 1..65535, but got {port}")
    _check_port_free(host, port)
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"warning: serving on {host}: anyone who can reach it sees the study", file=sys.stderr
        )
    print(
        f"optuna-dashboard for {storage_mod.mask_url(url)} at http://{host}:{port}/",
        file=sys.stderr,
    )
    from search.report.notes import artifact_store

    store = artifact_store(storage_mod.artifact_store_dir(url))
    run_server(storage_mod.open_storage(url), host=host, port=port, artifact_store=store)
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
