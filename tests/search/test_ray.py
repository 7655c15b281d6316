"""``search run --ray``: trials as Ray work, exact counts, pruning and budgets through Ray, a
node removed mid-trial, and bad input refused before anything is written.

Ray runs inside network and pid namespaces each test makes (``unshare -n -p``, only loopback
up), so it never binds or probes this machine's address, and everything it started ends with
the test's shell (pid 1 there), whatever ``ray stop`` would have found. PostgreSQL, started by
the session outside, is reached over its Unix socket, which crosses network namespaces.

The tests that start a Ray cluster are marked ``ray_cluster`` (``pytest -m ray_cluster
tests/search/test_ray.py`` runs only them); they are part of the default run since they passed
20 runs in a row.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import optuna
import pytest
from conftest import TINY_DIGITS, one_error_line
from optuna.trial import TrialState
from pgserver import USER, pg_fixture  # noqa: F401  (fixture pg)

from search.cli import main
from search.store import Storage

pytest.importorskip("ray")
pytestmark = pytest.mark.postgres

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
RAY = os.path.join(os.path.dirname(sys.executable), "ray")
PORT = 6380  # inside the test's own network namespace: nothing else listens there
FAST = ["--heartbeat", "0.5", "--grace", "5"]
UNSHARE = ["unshare", "--net", "--pid", "--fork", "--mount-proc"]


def _netns_works() -> bool:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return False
    proc = subprocess.run(
        [*UNSHARE, "sh", "-c", "ip link set lo up"], capture_output=True, timeout=30
    )
    return proc.returncode == 0


if not _netns_works():
    pytest.skip(
        "needs `unshare -n` (root) and iproute2 to run Ray in a private network namespace",
        allow_module_level=True,
    )


@pytest.fixture
def sock_url(pg) -> str:
    """A fresh database over the server's Unix socket (local connections are trusted)."""
    return f"postgresql+psycopg://{USER}@/{pg.new_database()}?host={pg.sock}&port={pg.port}"


def in_netns(
    script: str, *, env: dict[str, str], timeout: float = 240
) -> subprocess.CompletedProcess:
    """``script`` (bash) in new network and pid namespaces, with only loopback up."""
    return subprocess.run(
        [*UNSHARE, "bash", "-c", "ip link set lo up && " + script],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def with_ray_head(command: str, *, cpus: int, gpus: int = 0) -> str:
    """A one-node cluster started with ``ray start`` on 127.0.0.1, then ``command``; the
    script exits with the command's code (Ray ends with the pid namespace)."""
    return (
        f"{RAY} start --head --node-ip-address 127.0.0.1 --port {PORT} --num-cpus {cpus} "
        f"--num-gpus {gpus} --include-dashboard false --disable-usage-stats >ray-start.log 2>&1 "
        f"|| {{ cat ray-start.log; exit 99; }}; {command}"
    )


def search_cmd(*args: str) -> str:
    return " ".join([sys.executable, "-m", "search.cli", *args])


def env_for(url: str) -> dict[str, str]:
    env = dict(os.environ, SEARCH_STORAGE=url, OMP_NUM_THREADS="1", RAY_USAGE_STATS_ENABLED="0")
    env.pop("HPSEARCH_FAULTS", None)
    env.pop("CUDA_VISIBLE_DEVICES", None)  # Ray assigns the logical GPUs itself
    # the cluster lives in the test's private namespaces; no token file shared with the user's
    env["RAY_AUTH_MODE"] = "disabled"
    return env


def load(url: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=url)


@pytest.mark.ray_cluster
def test_exact_trials_with_half_a_gpu_each_four_at_a_time(write_study, sock_url):
    """2 logical GPUs, --gpus-per-trial 0.5: four workers, two on each GPU; exactly 8."""
    write_study("tiny", TINY_DIGITS.replace("epochs = 3", "epochs = 2"))
    cmd = search_cmd("run", "--study", "tiny", "--trials", "8", "--ray", f"127.0.0.1:{PORT}",
                     "--gpus-per-trial", "0.5", "--cpus-per-trial", "1", "-q", *FAST)  # fmt: skip
    proc = in_netns(with_ray_head(cmd, cpus=4, gpus=2), env=env_for(sock_url))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "started 4 workers on Ray (0.5 GPU" in proc.stderr
    trials = load(sock_url, "tiny").trials
    assert sum(t.state in FINISHED for t in trials) == 8
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    gpus = {t.user_attrs["placement"].rsplit(" GPU ", 1)[1] for t in trials}
    assert gpus == {"0", "1"}, gpus  # Ray spread the workers over both GPUs
    assert all(t.user_attrs["placement"].startswith("node ") for t in trials)


@pytest.mark.ray_cluster
def test_pruning_stops_bad_trials_through_ray(write_study, sock_url):
    """One worker (2 CPUs a trial on 2): two good enqueued trials first, then draws from a
    good and a hopeless learning rate; the median pruner stops every hopeless one early."""
    study = TINY_DIGITS.replace("epochs = 3", "epochs = 4").replace(
        'name = "none"', 'name = "median"\nn_startup_trials = 2\nn_warmup_steps = 0'
    )
    study += textwrap.dedent("""
        [params]
        "optim.lr" = [3e-3, 1e-7]

        [[enqueue]]
        "optim.lr" = 3e-3

        [[enqueue]]
        "optim.lr" = 3e-3
    """)
    write_study("tiny", study)
    cmd = search_cmd("run", "--study", "tiny", "--trials", "6", "--ray", f"127.0.0.1:{PORT}",
                     "--cpus-per-trial", "2", "-q", *FAST)  # fmt: skip
    proc = in_netns(with_ray_head(cmd, cpus=2), env=env_for(sock_url))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    trials = load(sock_url, "tiny").trials
    assert len(trials) == 6
    assert [t.state for t in trials[:2]] == [TrialState.COMPLETE] * 2
    hopeless = [t for t in trials[2:] if t.params["optim.lr"] == 1e-7]
    assert hopeless  # the seeded sampler draws it at least once in four
    for t in hopeless:
        assert t.state == TrialState.PRUNED and len(t.intermediate_values) < 4, t.number


@pytest.mark.ray_cluster
def test_a_budget_ends_the_run_through_ray(write_study, sock_url):
    """--budget 60s on Ray: the command ends within the budget's bound, and a trial still
    running at the deadline stops there (pruned, status budget), none left RUNNING. Its
    estimate (from the speed probe: 10 short epochs) fits; its epochs take 8 s each, so no trial
    finishes inside the budget."""
    write_study("tiny", TINY_DIGITS.replace("epochs = 3", "epochs = 10").replace(
        "patience = 2", "patience = 10"))  # fmt: skip
    cmd = search_cmd("run", "--study", "tiny", "--budget", "60s", "--ray", f"127.0.0.1:{PORT}",
                     "--cpus-per-trial", "1", "-q", *FAST)  # fmt: skip
    script = with_ray_head(
        f"start=$SECONDS; {cmd}; code=$?; echo elapsed $((SECONDS - start)); (exit $code)", cpus=2
    )
    env = env_for(sock_url)
    env["HPSEARCH_FAULTS"] = "epoch_sleep=8.0"  # 10 epochs of >= 8 s, over the 60 s budget: cut
    proc = in_netns(script, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    elapsed = float(proc.stdout.split("elapsed ")[1].split()[0])
    # the promise counts from the command's own start; bash's clock also counts Python's
    # start-up and imports before it (seconds on a loaded machine)
    assert elapsed <= 60 * 1.1 + 30 + 15, proc.stderr
    trials = load(sock_url, "tiny").trials
    states = [(t.number, t.state.name, t.user_attrs.get("status")) for t in trials]
    assert not [t for t in trials if t.state == TrialState.RUNNING], states
    assert any(t.user_attrs.get("status") == "budget" for t in trials), (states, proc.stderr)


NODE_LOSS = """
import os, subprocess, sys, time
import optuna
from ray.cluster_utils import Cluster

url, cmd = sys.argv[1], sys.argv[2:]
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "node_ip_address": "127.0.0.1", "include_dashboard": False})
node = cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
run = subprocess.Popen([*cmd, "--ray", cluster.address], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
deadline = time.monotonic() + 120
moved = None
while moved is None and time.monotonic() < deadline and run.poll() is None:
    time.sleep(0.3)
    try:
        study = optuna.load_study(study_name="tiny", storage=url)
    except KeyError:
        continue
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if 1 in t.intermediate_values:
            moved = t.number
if moved is None:
    run.kill()
    print("NO EPOCH 1", run.stdout.read())
    sys.exit(3)
cluster.remove_node(node)
cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
out, _ = run.communicate(timeout=180)
print(out)
print("MOVED", moved)
cluster.shutdown()
sys.exit(run.returncode)
"""


@pytest.mark.ray_cluster
def test_a_node_removed_mid_trial_moves_the_trial_which_resumes_from_its_epoch(
    write_study, sock_url, tmp_path
):
    write_study("tiny", TINY_DIGITS)
    script = tmp_path / "node_loss.py"
    script.write_text(NODE_LOSS)
    cmd = [sys.executable, "-m", "search.cli", "run", "--study", "tiny", "--trials", "2",
           "--cpus-per-trial", "1", "-q", *FAST]  # fmt: skip
    env = env_for(sock_url)
    env["HPSEARCH_FAULTS"] = "epoch_sleep=1.0"  # every epoch takes >= 1 s
    env["SEARCH_ARTIFACTS"] = str(tmp_path / "artifacts")
    args = " ".join(f"'{a}'" for a in [sys.executable, str(script), sock_url, *cmd])
    proc = in_netns(args, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    moved = int(proc.stdout.rsplit("MOVED ", 1)[1].split()[0])
    assert "lost" in proc.stdout and "takes over" in proc.stdout
    trials = load(sock_url, "tiny").trials
    assert sum(t.state in FINISHED for t in trials) == 2
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    lost = trials[moved]
    assert lost.state == TrialState.FAIL and lost.user_attrs["status"] == "lost"
    # failed by the command that started the run, as soon as Ray lost the task: a worker on
    # another node could tell only after the heartbeat grace
    assert "its Ray task was lost" in lost.user_attrs["reason"]
    (retry,) = [t for t in trials if t.user_attrs.get("retry_of") == moved]
    assert retry.state in FINISHED and retry.params == lost.params
    assert retry.user_attrs["resumed_from_epoch"] >= 1  # from its epoch, not from scratch
    assert retry.intermediate_values[1] == lost.intermediate_values[1]


CTRL_C = """
import signal, subprocess, sys, time
import optuna

url, cmd = sys.argv[1], sys.argv[2:]
storage = optuna.storages.RDBStorage(url)  # one engine for every look, not one per look
run = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
start = time.monotonic()
looks, seen, sent = [], "nothing", None
while time.monotonic() - start < 120 and run.poll() is None:
    time.sleep(0.3)
    t = time.monotonic()
    try:
        study = optuna.load_study(study_name="tiny", storage=storage)
        trials = study.get_trials(deepcopy=False)
    except KeyError:  # the command has not created the study yet
        continue
    finally:
        looks.append(time.monotonic() - t)
    seen = [(tr.number, tr.state.name, sorted(tr.intermediate_values)) for tr in trials]
    # a worker that reported an epoch is training the next one
    if any(tr.state.name == "RUNNING" and tr.intermediate_values for tr in trials):
        sent = time.monotonic() - start
        break
run.send_signal(signal.SIGINT)
out, _ = run.communicate(timeout=120)
print(out)
# what the driver saw, for a failure to explain itself
print(f"LOOKS {len(looks)} (slowest {max(looks, default=0):.2f} s) SENT {sent} SEEN {seen}")
print("CODE", run.returncode)
"""


@pytest.mark.ray_cluster
@pytest.mark.rerun_20
def test_ctrl_c_on_the_command_marks_the_trials_on_ray_failed_with_the_reason(
    write_study, sock_url, tmp_path
):
    write_study("tiny", TINY_DIGITS.replace("epochs = 3", "epochs = 6"))
    script = tmp_path / "ctrl_c.py"
    script.write_text(CTRL_C)
    cmd = [sys.executable, "-m", "search.cli", "run", "--study", "tiny", "--trials", "4",
           "--ray", "local", "--cpus-per-trial", "1", "-q", *FAST]  # fmt: skip
    env = env_for(sock_url)
    # 6 epochs of >= 3 s: the trials are still running when the driver sends Ctrl-C (with
    # 1 s epochs, on a loaded machine, all four once ended before it looked)
    env["HPSEARCH_FAULTS"] = "epoch_sleep=3.0"
    args = " ".join(f"'{a}'" for a in [sys.executable, str(script), sock_url, *cmd])
    proc = in_netns(args, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SENT None" not in proc.stdout, proc.stdout  # Ctrl-C came while a trial trained
    assert "CODE 130" in proc.stdout, proc.stdout
    trials = load(sock_url, "tiny").trials
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert failed and all("interrupted" in t.user_attrs["reason"] for t in failed), (
        proc.stdout + str([(t.state, t.user_attrs.get("status")) for t in trials])
    )


# ----------------------------------------------------------------- refused before anything


def test_no_ray_at_the_address_is_one_error_line_and_writes_nothing(write_study, sock_url, capsys):
    write_study("tiny", TINY_DIGITS)
    code = main(["run", "--study", "tiny", "--trials", "2", "--storage", sock_url,
                 "--ray", "127.0.0.1:9"])  # fmt: skip
    assert code == 2
    one_error_line(capsys, "no Ray cluster reachable at 127.0.0.1:9", "ray start --head")
    assert "tiny" not in [s.study_name for s in optuna.get_all_study_summaries(sock_url)]


@pytest.mark.parametrize(
    ("share", "words"),
    [("1.5", "must be in (0, 1]"), ("0.3", "does not divide a GPU evenly"), ("0", "(0, 1]")],
)
def test_a_gpu_share_above_one_or_uneven_is_refused(write_study, sock_url, capsys, share, words):
    write_study("tiny", TINY_DIGITS)
    code = main(["run", "--study", "tiny", "--trials", "2", "--storage", sock_url,
                 "--ray", "local", "--gpus-per-trial", share])  # fmt: skip
    assert code == 2
    one_error_line(capsys, words)
    assert "tiny" not in [s.study_name for s in optuna.get_all_study_summaries(sock_url)]


def test_ray_with_sqlite_is_refused_with_the_fix(write_study, tmp_path, capsys):
    write_study("tiny", TINY_DIGITS)
    db = tmp_path / "s.db"
    code = main(["run", "--study", "tiny", "--trials", "2", "--storage", f"sqlite:///{db}",
                 "--ray", "local"])  # fmt: skip
    assert code == 2
    one_error_line(capsys, "--ray needs PostgreSQL", "--storage postgresql")
    assert not db.exists()


def test_ray_options_without_ray_are_refused(write_study, sock_url, capsys):
    write_study("tiny", TINY_DIGITS)
    code = main(["run", "--study", "tiny", "--trials", "2", "--storage", sock_url,
                 "--gpus-per-trial", "0.5"])  # fmt: skip
    assert code == 2
    one_error_line(capsys, "--gpus-per-trial", "--ray")


def test_slots_follow_the_cluster_and_fall_back_to_cpus():
    from search.experiments.ray_launcher import RayOptions, slots

    quarter = RayOptions("auto", gpus_per_trial=0.25, cpus_per_trial=1)
    assert slots({"CPU": 16.0, "GPU": 2.0}, quarter) == (8, 0.25)
    assert slots({"CPU": 4.0, "GPU": 2.0}, quarter) == (4, 0.25)  # CPUs bound it
    assert slots({"CPU": 3.0}, quarter) == (3, 0.0)  # no GPU: CPU trials
    with pytest.raises(ValueError, match="a trial needs 2 CPU"):
        slots({"CPU": 1.0}, RayOptions("auto", cpus_per_trial=2))


def test_local_workers_sharing_a_gpu_each_get_their_share_of_its_memory(monkeypatch):
    """--workers 3 on 2 GPUs: GPU 0 runs two workers (half its memory each), GPU 1 one."""
    from search.experiments import launcher

    envs = []

    class FakeProc:
        def __init__(self, cmd, *, env, **kwargs):
            envs.append(env)
            self.stdout = iter(())

        def wait(self):
            return 0

        def poll(self):
            return 0

    monkeypatch.setattr(launcher, "gpu_ids", lambda: ["0", "1"])
    monkeypatch.setattr(launcher.subprocess, "Popen", FakeProc)
    storage = Storage.open("sqlite:///unused.db")
    with open(os.devnull, "w") as devnull:
        code = launcher.launch(["run"], storage=storage, workers=3, threads=1, stream=devnull)
    assert code == 0
    got = [(e["CUDA_VISIBLE_DEVICES"], e.get("HPSEARCH_GPU_SHARE")) for e in envs]
    assert got == [("0", "0.5"), ("1", None), ("0", "0.5")]


def test_a_checkpoint_folder_a_node_cannot_see_is_refused_before_the_study(
    write_study, sock_url, tmp_path, capsys, monkeypatch
):
    """Two nodes, one of which does not mount the folder: one line naming that node, and no
    study created (the check runs before the study is)."""
    from search.experiments import ray_launcher

    HEAD = "a" * 56  # Ray's node ids are 28 bytes in hex

    class Remote:  # ray.remote(f).options(...).remote(path): runs f "on" the node
        def __init__(self, fn, node=None):
            self.fn, self.node = fn, node

        def options(self, scheduling_strategy):
            return Remote(self.fn, scheduling_strategy.node_id)

        def remote(self, path):
            return (self.node, self.fn(path))

    class FakeRay:
        def nodes(self):
            return [
                {"Alive": True, "NodeID": HEAD, "NodeManagerAddress": "10.0.0.1"},
                {"Alive": True, "NodeID": "b" * 56, "NodeManagerAddress": "10.0.0.2"},
            ]

        def remote(self, **kwargs):
            return Remote

        def get(self, ref, timeout=None):
            node, seen = ref
            return seen and node == HEAD  # the other node has its own empty disk

        def shutdown(self):
            pass

    monkeypatch.setattr(ray_launcher, "connect", lambda options: FakeRay())
    write_study("tiny", TINY_DIGITS)
    code = main(["run", "--study", "tiny", "--trials", "2", "--storage", sock_url, "--ray",
                 "auto", "--artifacts", str(tmp_path / "ckpt")])  # fmt: skip
    assert code == 2
    one_error_line(capsys, "not visible on node(s) 10.0.0.2", "--artifacts")
    assert "tiny" not in [s.study_name for s in optuna.get_all_study_summaries(sock_url)]
    assert not list((tmp_path / "ckpt").glob(".hpsearch-probe-*"))  # the probe is removed
