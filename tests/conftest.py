"""Shared test set-up.

* Hypothesis: under CI (CI=true) a derandomized profile without deadline (a first call
  may compile a kernel) and capped examples; locally the "dev" profile, also no deadline.
* The kernels are compiled once, before any test runs, two processes at a time (both
  dtypes, into Numba's cache, whose saves minialbert.numba_cache serialises); each test
  process loads them from the cache.
* Under CI a skipped test is an error: the torch/transformers parity tests must run.
  Only tests marked ``opt_in`` (they need a real downloaded checkpoint) may skip.
"""
import os

import numba
import numpy as np
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("ci", deadline=None, derandomize=True, max_examples=20,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", deadline=None, max_examples=30,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci" if os.environ.get("CI") else os.environ.get("HYPOTHESIS_PROFILE", "dev"))

IN_CI = bool(os.environ.get("CI"))
_GROUP = pytest.StashKey[str]()
# the xdist groups that take longest (the CI's --durations on a 2-core EPYC, Zen 3: 20-80 s
# each), handed out first; every other group after them, in file order
SLOW_FIRST = ["test_kernels", "test_book", "test_tutorials::09_optimizers",
              "test_tutorials::10_pretraining", "test_tutorials::12_looking_inside",
              "test_tutorials::11_finetuning", "test_tutorials::01_matmul",
              "test_tutorials::15_scaling_out", "test_tutorials::13_hf_checkpoints"]
ALL_THREADS = numba.config.NUMBA_NUM_THREADS


def pytest_configure(config):
    if not hasattr(config, "workerinput"):  # the main process (with -n 2, before the workers)
        # a clean clone compiles every kernel once (both dtypes: ~260 s on one core of a
        # 2-core Zen 3 EPYC, 2.3 minutes here): two processes
        # compile half each into Numba's cache (its saves take a file lock:
        # minialbert/numba_cache.py), and every test process then loads them
        from minialbert.kernels import warmup
        warmup(processes=2)
    if hasattr(config.option, "loadscopereorder"):  # xdist: hand out the groups in the
        config.option.loadscopereorder = False  # order pytest_collection_modifyitems gives
    config.addinivalue_line("markers", "opt_in: needs a resource that cannot be made here "
                            "(a real downloaded checkpoint); may skip, also in CI")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """With ``-n 2 --dist loadgroup`` (the README's command), a test file runs whole in one
    test process, as with loadfile (its module fixtures, such as a reference training run,
    are made once), except the tutorials: each is a subprocess of its own, and the dozen of
    them (about 250 s) would otherwise all wait for one process.

    The groups are handed out longest first (SLOW_FIRST, then the rest in file order; xdist
    by itself orders them by their number of tests, which put single slow tests at the
    end, where one process ran them while the other had nothing left)."""
    for item in items:
        group = item.module.__name__
        if group == "test_tutorials" and hasattr(item, "callspec"):
            group += "::" + item.callspec.id
        item.add_marker(pytest.mark.xdist_group(group))
        item.stash[_GROUP] = group
    rank = {g: i for i, g in enumerate(SLOW_FIRST)}
    items.sort(key=lambda it: rank.get(it.stash[_GROUP], rank.get(it.module.__name__,
                                                                   len(SLOW_FIRST))))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if IN_CI and rep.skipped and item.get_closest_marker("opt_in") is None:
        rep.outcome = "failed"
        rep.longrepr = (f"skipped under CI, which is an error here: {rep.longrepr}. "
                        "Install the test extra: pip install -e '.[test]'")


@pytest.fixture(scope="session", autouse=True)
def warm_kernels():
    """Compile (or load from cache) every kernel for both dtypes once per session. Under
    pytest-xdist (-n 2: one test process per core) each test process computes on one
    thread, ours and torch's: two processes of two threads each on two cores made every
    parallel region wait for a core. A whole-model finite-difference check (thousands of
    small calls) once took 294 s so, against 2-5 s. Tests that are about threads set
    their counts themselves (the ``threads`` fixture: 1 and all)."""
    from minialbert.kernels import warmup
    warmup()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        numba.set_num_threads(1)
        try:
            import torch
            torch.set_num_threads(1)
        except ImportError:  # the parity tests then fail under CI (a skip is an error)
            pass
    yield


@pytest.fixture(autouse=True)
def threads_are_given_back():
    """A test, and the library call it makes, leaves Numba's thread count as it found it:
    a count left at all cores made the next test files in that process 5-20x slower
    next to the other test process (pretrain() once did: kernels.keeps_threads)."""
    before = numba.get_num_threads()
    yield
    after = numba.get_num_threads()
    numba.set_num_threads(before)
    assert after == before, f"the test left Numba's thread count at {after}, not {before}"


@pytest.fixture(params=[1, ALL_THREADS], ids=lambda n: f"threads{n}")
def threads(request):
    prev = numba.get_num_threads()
    numba.set_num_threads(request.param)
    yield request.param
    numba.set_num_threads(prev)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
