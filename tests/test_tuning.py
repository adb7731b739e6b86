"""Lesson 08's tuning tools: the small task, the objective, and worker processes that fill one
Optuna study together, through a journal file and through a real PostgreSQL server."""
import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest

from course_utils.tuning import objective, open_storage, small_task, train_mlp, wait_for_workers

REPO = Path(__file__).resolve().parents[1]
optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(scope="module")
def task():
    return small_task()


def test_small_task_is_standardized_on_its_training_part_only(task):
    assert task.x_train.shape == (4000, 784) and task.x_val.shape == (2000, 784)
    assert abs(task.x_train.mean().item()) < 1e-4 and abs(task.x_train.std().item() - 1) < 1e-3
    assert abs(task.x_val.mean().item()) > 1e-4           # the validation part keeps its own offset
    assert task.y_train.bincount().tolist() == [400] * 10  # stratified


def test_train_mlp_is_deterministic_and_a_report_can_stop_it(task):
    _, first = train_mlp(task, lr=0.05, momentum=0.9, seed=3)
    _, again = train_mlp(task, lr=0.05, momentum=0.9, seed=3)
    assert first == again and first > 0.75
    seen = []
    train_mlp(task, lr=0.05, report=lambda k, acc: seen.append(k) or k == 2)
    assert seen == [1, 2]
    _, diverged = train_mlp(task, lr=50.0, momentum=0.9)
    assert diverged == 0.1
    with pytest.raises(ValueError, match="'sgd' or 'adam'"):
        train_mlp(task, lr=0.01, optimizer="lbfgs")


def test_objective_reports_and_prunes(task):
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0),
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0))
    study.optimize(lambda trial: objective(trial, task, steps=50), n_trials=14)
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.PRUNED) >= 1
    assert all(len(t.intermediate_values) == 5 for t in study.trials if t.state.name == "COMPLETE")


def run_two_workers(storage: str, name: str, trials_each: int = 3):
    study = optuna.create_study(study_name=name, storage=open_storage(storage), direction="maximize")
    command = [sys.executable, "-m", "course_utils.tuning", "--storage", storage, "--study", name,
               "--trials", str(trials_each), "--wait-for", "2"]
    workers = [subprocess.Popen(command, cwd=REPO, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for worker in workers:
        _, errors = worker.communicate(timeout=300)
        assert worker.returncode == 0, errors[-3000:]
    study = optuna.load_study(study_name=name, storage=open_storage(storage))
    finished = [t for t in study.trials if t.state.is_finished()]
    assert len(finished) == 2 * trials_each
    assert len({t.user_attrs["worker"] for t in finished}) == 2, "both workers added trials"
    assert all(t.number == i for i, t in enumerate(study.trials)), "one numbering for the whole study"
    first_ends = [min(t.datetime_complete for t in finished if t.user_attrs["worker"] == pid)
                  for pid in {t.user_attrs["worker"] for t in finished}]
    assert all(t.datetime_start < min(first_ends) for t in finished if t.number < 2), \
        "after the rendezvous both workers start a trial before either finishes one"
    return study


def test_two_workers_fill_one_journal_study(tmp_path):
    run_two_workers(str(tmp_path / "study.journal"), "journal")


def test_a_worker_waiting_for_workers_that_never_come_says_what_to_do():
    study = optuna.create_study(direction="maximize")
    with pytest.raises(TimeoutError, match="start them all with the same --wait-for"):
        wait_for_workers(study, 2, timeout=0.3)


def test_a_worker_on_a_missing_study_says_how_to_create_it(tmp_path):
    result = subprocess.run([sys.executable, "-m", "course_utils.tuning", "--storage",
                             str(tmp_path / "none.journal"), "--study", "nope"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "create it first with optuna.create_study" in result.stderr


# ---------------------------------------------------------------------------------------------
# PostgreSQL: the storage several machines would share, started here for real
# ---------------------------------------------------------------------------------------------

def _postgres_bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():
    """A throwaway PostgreSQL server on loopback, stopped and deleted after the tests."""
    initdb, pg_ctl = _postgres_bin("initdb"), _postgres_bin("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("PostgreSQL is not installed (Debian: apt-get install postgresql; "
                    "scripts/setup.sh --test does it when run as root)")
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        pytest.skip("psycopg2 is missing: install the test extras (pip install -e '.[test]')")
    run_as = []
    if os.geteuid() == 0:  # the server refuses to run as root: use Debian's postgres account
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to start the server as")
        run_as = ["runuser", "-u", "postgres", "--"]
    root = Path(tempfile.mkdtemp(prefix="course-pg-"))
    root.chmod(0o755)
    if run_as:
        shutil.chown(root, "postgres")
    data, port = root / "data", _free_port()
    log = root / "server.log"
    try:
        subprocess.run(run_as + [initdb, "-D", str(data), "-A", "trust", "-U", "course", "--no-sync"],
                       check=True, capture_output=True, timeout=120)
        subprocess.run(run_as + [pg_ctl, "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o",
                                 f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off",
                                 "start"], check=True, capture_output=True, timeout=120)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, FileNotFoundError) as err:
        detail = getattr(err, "stderr", b"") or b""
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"could not start a PostgreSQL server here: {err}; {detail.decode(errors='replace')[-500:]}")
    try:
        yield f"postgresql+psycopg2://course@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(run_as + [pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"],
                       capture_output=True, timeout=120)
        shutil.rmtree(root, ignore_errors=True)


def test_two_workers_fill_one_postgresql_study(postgres_url):
    start = time.perf_counter()
    study = run_two_workers(postgres_url, "postgres-shared")
    assert study.best_value > 0.1
    # a third process sees the same study through the server, as another machine would
    again = optuna.load_study(study_name="postgres-shared", storage=postgres_url)
    assert [t.value for t in again.trials] == [t.value for t in study.trials]
    assert time.perf_counter() - start < 300
