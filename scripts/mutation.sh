#!/usr/bin/env bash
# Mutation testing of the modules where a wrong line loses a user's data or misstates a
# result: trial claims and recovery, budgets and the cost model, the run's stop logic and
# checkpoint retention, the statistics and tables, the split recording, the optimisation step.
# Not part of CI. Score, timings and every survivor: benchmarks/RESULTS.md.
#
#   bash scripts/mutation.sh            # the committed tree (HEAD), in a scratch folder
#   JOBS=1 bash scripts/mutation.sh     # mutants in parallel (default 2)
#   bash scripts/mutation.sh 'search.study.splits*' 'trainer.steps*'   # these, not SCOPE
#   MUTATION_DIR=/tmp/m bash scripts/mutation.sh   # a new or empty folder of your choice
#
# Tool: mutmut 3. It mutates a copy of the code (mutants/ in the scratch folder, never this
# work tree), switches mutants on per function through an environment variable (no re-import
# per mutant), and runs each mutant against only the selected tests that called its function,
# as recorded in one traced run of them: each module is mapped to its fast tests below. Tests
# that start other processes are left out (a child process would not trace back), and so are
# slow ones that wait out a wall clock (a surviving mutant pays for every test). cosmic-ray
# was the alternative: it rewrites the files in place (unsafe in a shared work tree) and
# starts a new test process per mutant (torch's import alone is seconds).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
VENV=${VENV:-$REPO/.venv}
JOBS=${JOBS:-2}
WORK=${MUTATION_DIR:-$(mktemp -d /tmp/hpsearch-mutation.XXXXXX)}
# mutmut keeps the results it finds in mutants/: a folder of an earlier run would count
# mutants judged against older tests
if [ -n "$(ls -A "$WORK" 2>/dev/null)" ]; then
    echo "error: MUTATION_DIR $WORK is not empty; name a new or empty folder" >&2
    exit 2
fi
mkdir -p "$WORK"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check "mutmut==3.8.1"
git -C "$REPO" archive HEAD | tar -x -C "$WORK"
cat > "$WORK/setup.cfg" <<'CFG'
[mutmut]
source_paths =
    search
    spaces
    trainer
only_mutate =
    search/store/workers.py
    search/study/budget.py
    search/experiments/cost.py
    search/experiments/run.py
    search/report/stats.py
    search/report/tables.py
    search/study/splits.py
    trainer/steps.py
also_copy =
    studies
# Statements that only word a progress line or a log record: a mutant there changes what a
# line says, never a result, a count or a file (the wording of errors stays in scope).
do_not_mutate_patterns =
    ^\s*(self\.)?(progress\.message|say|log\.(debug|info|warning|error)|print)\(
# the tests that killed a neighbour first, then the fastest, and a frozen heap
# (scripts/mutation_plugin.py); no forced garbage collection of that heap at every
# mutant's end (pytest's unraisable-exception check: 0.6 s of a fast mutant's 0.7)
pytest_add_cli_args =
    -p mutation_plugin
    -p no:unraisableexception
# a mutant whose tests run past 2x their traced time (plus 1 s) is stopped (mutmut: 15x):
# traced under coverage, they ran slower than in a mutant's run (14 s against 4.6 s)
timeout_multiplier = 2
pytest_add_cli_args_test_selection =
    tests/search/test_stats.py
    tests/search/test_tables.py
    --deselect=tests/search/test_tables.py::test_tables_are_written_in_utf8_under_an_ascii_locale
    tests/search/test_export.py
    tests/search/test_splits.py
    tests/search/test_ablate_test_split.py
    tests/search/test_budget.py
    --deselect=tests/search/test_budget.py::test_budget_stops_the_running_trial_and_a_rerun_goes_on
    tests/search/test_run_policy.py
    tests/search/test_claims.py
    tests/search/test_run.py
    tests/search/test_fidelity.py
    tests/search/test_single_runs.py
    --deselect=tests/search/test_fidelity.py::test_a_refit_the_clock_stops_keeps_its_best_epoch
    --deselect=tests/search/test_fidelity.py::test_when_no_refit_fits_the_search_goes_on_to_the_end_of_the_budget
    tests/search/test_params.py::test_dry_run_prints_three_configurations_and_writes_nothing
    tests/search/test_params.py::test_dry_run_shows_the_queue_then_the_draws_that_a_run_of_the_study_starts_with
    tests/trainer/test_steps.py
    tests/search/test_faults.py::test_a_dead_worker_is_told_from_a_live_one_by_pid_start_time_and_state
    tests/search/test_faults.py::test_only_a_trial_whose_local_worker_process_is_gone_is_failed_before_the_grace[sqlite]
    tests/search/test_faults.py::test_a_trial_left_without_a_heartbeat_is_judged_in_utc_in_any_time_zone[sqlite-Asia/Tokyo]
    tests/search/test_faults.py::test_lost_trials_are_retried_a_bounded_number_of_times[sqlite]
    tests/search/test_faults.py::test_budget_is_exact_when_workers_race[sqlite]
    tests/search/test_faults.py::test_a_signal_after_training_but_before_the_tell_still_records_it_as_the_reason[sqlite]
# torch is not safe to fork from a process that ran it: fork each mutant from a server
process_isolation = forkserver
CFG
cd "$WORK"
# The mutants a run judges (mutmut names: module.x_function__mutmut_N). Of run.py only what
# ends a run, counts and keeps its trials: the stop logic, the claimed trial's tell, the
# refit at the budget's end and checkpoint retention. Left out there: plan_run (bad input
# refused before anything is written, tested through the CLI outside this selection),
# study_backbones, and the words of progress lines (describe_trial, describe_best, _of) and
# of --dry-run. A mutant in code that runs every `search run` costs every selected test
# that ran it when it survives: those leftovers would double the run's time.
SCOPE=(
    'search.store.workers.*' 'search.study.budget.*' 'search.experiments.cost.*'
    'search.report.stats.*' 'search.report.tables.*' 'search.study.splits.*' 'trainer.steps.*'
    'search.experiments.run.x_open_study__*' 'search.experiments.run.x_prepare_study__*'
    'search.experiments.run.x_finished_count__*' 'search.experiments.run.x_run_study__*'
    'search.experiments.run.x__search_on__*' 'search.experiments.run.x__refit*'
    'search.experiments.run.x_refit*' 'search.experiments.run.xǁ_RefitObjectiveǁ*'
    'search.experiments.run.x__cfg_epochs__*' 'search.experiments.run.x__run_claimed__*'
    'search.experiments.run.x__tell__*' 'search.experiments.run.x__discard__*'
    'search.experiments.run.x__prune_checkpoints__*'
)
[ "$#" -gt 0 ] && SCOPE=("$@")
# the mutated copy first on the path, also for the few tests' child processes
export PYTHONPATH="$WORK/mutants:$WORK/scripts" HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1
# The tests' temporary folders (pytest's tmp_path: their SQLite studies, checkpoints) in
# memory where there is a tmpfs: the commits of a `search run` test then wait on no disk
# (the 31 tests of one run.py mutant: 30 s against 38 s). pytest numbers its folders per
# session there, so the two jobs never share one.
if [ -d /dev/shm ] && [ -w /dev/shm ]; then
    TMPDIR=$(mktemp -d /dev/shm/hpsearch-mutation.XXXXXX)
    export TMPDIR
    trap 'rm -rf "$TMPDIR"' EXIT
fi
start=$(date +%s)
# A first run on fresh mutants has ended in its traced run with pytest's exit code 4 (mutmut
# hides pytest's output there); run again, which goes on from where it stopped.
for attempt in 1 2; do
    nice -n 19 "$VENV/bin/mutmut" run --max-children "$JOBS" "${SCOPE[@]}" \
        > "mutmut-$attempt.log" 2>&1 && break
    [ "$attempt" = 2 ] && { tail -c 2000 "mutmut-$attempt.log"; exit 1; }
done
echo "mutmut: $(( $(date +%s) - start )) s; in $WORK"
# The score per module, of the mutants in scope that were judged (mutmut's own statuses;
# a timeout counts as killed: the tests did not pass), and every survivor.
"$VENV/bin/python" - "${SCOPE[@]}" <<'PY'
import collections
import fnmatch
import json
import sys
from pathlib import Path

from mutmut.stats import status_by_exit_code

scope = sys.argv[1:]
counts: dict[str, collections.Counter] = {}
survivors = []
for meta in sorted(Path("mutants").rglob("*.py.meta")):
    module = meta.relative_to("mutants").as_posix().removesuffix(".meta")
    for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
        if not any(fnmatch.fnmatch(name, pattern) for pattern in scope):
            continue
        status = status_by_exit_code[code]
        counts.setdefault(module, collections.Counter())[status] += 1
        if status == "survived":
            survivors.append(name)
total = collections.Counter()
for module, c in counts.items():
    total.update(c)
    judged = c["killed"] + c["timeout"] + c["survived"]
    print(f"{module:34} {sum(c.values()):5} mutants, {c['killed'] + c['timeout']:5} killed "
          f"of {judged:5} judged ({100 * (c['killed'] + c['timeout']) / max(judged, 1):5.1f}%)"
          + "".join(f", {n} {s}" for s, n in sorted(c.items())
                    if s not in ("killed", "survived", "timeout")))
judged = total["killed"] + total["timeout"] + total["survived"]
print(f"score: {total['killed'] + total['timeout']} of {judged} judged mutants killed "
      f"({100 * (total['killed'] + total['timeout']) / max(judged, 1):.1f}%); "
      + ", ".join(f"{n} {s}" for s, n in sorted(total.items())))
# where the time went: each mutant's pytest run (scripts/mutation_plugin.py); a mutant
# stopped at its time limit is not in the file
spent: dict[str, list[float]] = {}
times = Path("mutant-times.tsv")
for line in times.read_text().splitlines() if times.exists() else []:
    name, seconds, _, code = line.split("\t")
    if any(fnmatch.fnmatch(name, pattern) for pattern in scope):
        row = spent.setdefault(name.split(".x")[0], [0, 0.0, 0.0])
        row[0] += 1
        row[1] += float(seconds)
        row[2] += float(seconds) if code == "0" else 0.0
for module, (n, seconds, surviving) in sorted(spent.items(), key=lambda kv: -kv[1][1]):
    print(f"{module:34} {n:5} mutants timed: {seconds:7.0f} s of pytest, "
          f"{surviving:6.0f} s of it on survivors")
Path("survivors.txt").write_text("".join(f"{n}\n" for n in survivors))
print(f"{len(survivors)} survivors (in survivors.txt; `mutmut show NAME` in this folder):")
print("\n".join(survivors))
PY
