"""The allreduce latency path (collx._C.Comm.allreduce_fast) against numpy on every rank,
and the guarantee that it never accepts what the validated Python path would refuse."""
import pytest

from tests.mp.launch import assert_all_ok, clean_env, collxrun

pytestmark = pytest.mark.timeout(180)


@pytest.mark.parametrize("np_,transport", [(1, "shm"), (2, "shm"), (3, "shm"), (2, "tcp")])
def test_fast_path_exact_and_validating(np_, transport):
    env = clean_env(COLLX_TRANSPORT=transport) if transport == "tcp" else None
    job = collxrun(np_, "fast_path_worker.py", env=env, timeout=150)
    assert_all_ok(job, np_)
