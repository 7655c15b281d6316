"""Checkpoints and resume states in S3 (``--artifacts s3://BUCKET/PREFIX``), for every node.

With a folder as ``--artifacts`` (or ``$SEARCH_ARTIFACTS``), checkpoints and resume states are
files there, and every node must mount it. With ``s3://BUCKET/PREFIX`` they live in that
bucket, through Optuna's ``Boto3ArtifactStore``; each node writes and reads them in a local
staging folder that mirrors the bucket::

    s3://BUCKET/KEY   <->   $XDG_CACHE_HOME/hpsearch/s3/BUCKET/KEY   (default ~/.cache)

so the trainer keeps writing plain files, and a trial records the object's URL instead of a
path. What goes up, and when:

- a trial's checkpoint when the trial ends (the local copy is then removed);
- its resume state after every epoch, on a background thread at the first step of the next
  epoch (the state of epoch e is on disk by then; ``trainer.train`` writes it atomically);
- when a lost trial is retried, its last state is copied to a key of its own in the bucket,
  which the retry, on whatever node, downloads and resumes from.

Readers (``search predict``, ``evaluate``, ``confirm``, ``model.pretrained = "study:NAME"``)
download an object once into the same staging folder. The endpoint, region and credentials
come from the usual AWS variables or files (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ...),
read by boto3; nothing here prints them.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

SCHEME = "s3://"
INSTALL_HINT = "pip install 'hpsearch[s3]' (boto3)"


def is_remote(ref: str | os.PathLike | None) -> bool:
    """Whether ``ref`` (a trial's ``checkpoint`` or ``resume_from``, an artifacts root) is an
    S3 URL rather than a path."""
    return isinstance(ref, str) and ref.startswith(SCHEME)


def staging_root() -> Path:
    """The local mirror of every bucket: ``$XDG_CACHE_HOME/hpsearch/s3`` (~/.cache/...)."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "hpsearch" / "s3"


@dataclass(frozen=True)
class S3Url:
    bucket: str
    key: str  # no leading or trailing slash; "" for the bucket itself

    @classmethod
    def parse(cls, url: str) -> S3Url:
        if not is_remote(url):
            raise ValueError(f"{url!r} is not an s3://BUCKET/PREFIX URL")
        bucket, _, key = url[len(SCHEME) :].partition("/")
        if not bucket:
            raise ValueError(f"{url!r} names no bucket: use s3://BUCKET/PREFIX")
        parts = [p for p in key.split("/") if p]
        if any(p in (".", "..") for p in parts):
            raise ValueError(f"{url!r}: '.' and '..' are not allowed in the prefix")
        return cls(bucket, "/".join(parts))

    def __str__(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.key}" if self.key else f"{SCHEME}{self.bucket}"

    @property
    def local(self) -> Path:
        """Where this object is staged on this node."""
        return staging_root() / self.bucket / self.key

    @classmethod
    def of_local(cls, path: Path) -> S3Url:
        """The object a staged file mirrors."""
        rel = Path(path).resolve().relative_to(staging_root().resolve()).as_posix()
        bucket, _, key = rel.partition("/")
        return cls(bucket, key)


def _client() -> Any:
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise ValueError(f"checkpoints in S3 need boto3: {INSTALL_HINT}") from None
    # a few retries with backoff: an S3 endpoint drops connections now and then
    return boto3.client("s3", config=Config(retries={"max_attempts": 5, "mode": "standard"}))


def _error_code(exc: BaseException) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


def _not_found(exc: BaseException) -> bool:
    return _error_code(exc) in ("404", "NoSuchKey", "NotFound", "NoSuchBucket")


class _Stores:
    """One boto3 client per process (made on first use, so never shared across a fork), and
    Optuna's artifact store per bucket on it."""

    def __init__(self) -> None:
        self.pid: int | None = None
        self.client: Any = None
        self.stores: dict[str, Any] = {}

    def __call__(self, bucket: str) -> Any:
        import optuna

        if self.pid != os.getpid():
            self.pid, self.client, self.stores = os.getpid(), _client(), {}
        if bucket not in self.stores:
            # avoid_buf_copy: upload straight from the file, not through an in-memory copy of
            # a resume state that can be half a gigabyte
            self.stores[bucket] = optuna.artifacts.Boto3ArtifactStore(
                bucket, client=self.client, avoid_buf_copy=True
            )
        return self.stores[bucket]


_store = _Stores()


def check_bucket(url: str) -> None:
    """Before anything is written: the bucket exists and takes a write (one small object,
    removed again). ValueError, one line, otherwise."""
    loc = S3Url.parse(url)
    store = _store(loc.bucket)
    try:
        store.client.head_bucket(Bucket=loc.bucket)
    except Exception as exc:
        if _not_found(exc):
            raise ValueError(
                f"--artifacts {loc}: bucket {loc.bucket!r} does not exist; create it, or name "
                "another bucket"
            ) from None
        raise ValueError(f"--artifacts {loc}: {_reason(exc)}") from None
    probe = "/".join(p for p in (loc.key, f".hpsearch-write-check-{uuid.uuid4().hex}") if p)
    try:
        store.client.put_object(Bucket=loc.bucket, Key=probe, Body=b"hpsearch\n")
        store.remove(probe)
    except Exception as exc:
        raise ValueError(f"--artifacts {loc}: the bucket refuses writes ({_reason(exc)})") from None


def _reason(exc: BaseException) -> str:
    """A one-line cause from a botocore error: its code, or its class and first line (boto3's
    messages name the endpoint and the operation, never credentials)."""
    code = _error_code(exc)
    if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
        return f"access denied ({code}): check the AWS credentials this node uses"
    if code:
        return f"S3 error {code}"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def upload(local: Path) -> str:
    """Put a staged file into its bucket; its URL."""
    url = S3Url.of_local(local)
    with open(local, "rb") as f:
        _store(url.bucket).write(url.key, f)
    return str(url)


def download(ref: str) -> Path:
    """The object at ``ref`` as a local file (downloaded into the staging folder, atomically);
    FileNotFoundError when the object is not there."""
    from optuna.artifacts.exceptions import ArtifactNotFound

    url = S3Url.parse(ref)
    local = url.local
    local.parent.mkdir(parents=True, exist_ok=True)
    tmp = local.with_name(f".{local.name}.{uuid.uuid4().hex}.part")
    try:
        reader: BinaryIO = _store(url.bucket).open_reader(url.key)
        with reader, open(tmp, "wb") as out:
            for chunk in iter(lambda: reader.read(1 << 20), b""):
                out.write(chunk)
        os.replace(tmp, local)
    except ArtifactNotFound:
        raise FileNotFoundError(f"no object at {url}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return local


def exists(ref: str) -> bool:
    url = S3Url.parse(ref)
    try:
        _store(url.bucket).client.head_object(Bucket=url.bucket, Key=url.key)
    except Exception as exc:
        if _not_found(exc):
            return False
        raise
    return True


def copy(src: str, dst: str) -> None:
    """Copy one object to another key, inside the bucket (no download)."""
    a, b = S3Url.parse(src), S3Url.parse(dst)
    _store(b.bucket).client.copy_object(
        Bucket=b.bucket, Key=b.key, CopySource={"Bucket": a.bucket, "Key": a.key}
    )


def remove(ref: str | os.PathLike) -> None:
    """Delete a checkpoint or resume state, in the bucket or on disk; gone already is fine
    (another worker may have been first)."""
    if is_remote(ref):
        url = S3Url.parse(str(ref))
        with contextlib.suppress(FileNotFoundError):
            url.local.unlink()
        _store(url.bucket).remove(url.key)  # S3 deletes of a missing key succeed
    else:
        Path(ref).unlink(missing_ok=True)


def local_path(ref: str | os.PathLike) -> Path:
    """Where a checkpoint reference is (or would be staged) on this node; nothing is read."""
    return S3Url.parse(ref).local if is_remote(ref) else Path(ref)


def local_copy(ref: str | os.PathLike) -> Path:
    """A local path for a checkpoint reference: the path itself, or the S3 object downloaded."""
    return download(ref) if is_remote(ref) else Path(ref)


class PrefixedArtifactStore:
    """Optuna's artifact-store protocol over ``Boto3ArtifactStore`` with every key under a
    prefix, for the dashboard's note artifacts (Optuna's store writes them at the bucket's
    root)."""

    def __init__(self, url: str) -> None:
        self.url = S3Url.parse(url)

    def _key(self, artifact_id: str) -> str:
        return "/".join(p for p in (self.url.key, "artifact-store", artifact_id) if p)

    def open_reader(self, artifact_id: str) -> BinaryIO:
        return _store(self.url.bucket).open_reader(self._key(artifact_id))

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        _store(self.url.bucket).write(self._key(artifact_id), content_body)

    def remove(self, artifact_id: str) -> None:
        _store(self.url.bucket).remove(self._key(artifact_id))


__all__ = [
    "PrefixedArtifactStore",
    "S3Url",
    "check_bucket",
    "copy",
    "download",
    "exists",
    "is_remote",
    "local_copy",
    "local_path",
    "remove",
    "staging_root",
    "upload",
]
