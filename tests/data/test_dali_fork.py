"""A forked child (a DataLoader worker) that frees a DALI pipeline it inherited must not hang: the pipeline's
threads stayed in the parent, and its shutdown waited on them forever (fba.data.dali keeps them alive there)."""
from __future__ import annotations

import gc
import multiprocessing

import pytest

from fba.data.loaders import dali_available

HELD: list = []


def _drop_and_collect() -> None:
    HELD.clear()
    gc.collect()


@pytest.mark.skipif(not dali_available(), reason="NVIDIA DALI is not installed")
def test_a_forked_child_frees_an_inherited_pipeline_without_hanging():
    import fba.data.dali  # noqa: F401 - registers the fork hook, as any DALI loader's import does
    from nvidia.dali import fn, pipeline_def

    @pipeline_def(batch_size=2, num_threads=2, device_id=None)
    def noise():
        return fn.random.uniform(range=[0.0, 1.0], shape=[4])

    HELD.append(noise())
    HELD[0].build()
    HELD[0].run()
    child = multiprocessing.get_context("fork").Process(target=_drop_and_collect)
    child.start()
    child.join(30)
    hung = child.is_alive()
    if hung:
        child.kill()
        child.join()
    HELD.clear()
    assert not hung and child.exitcode == 0, "the child hung freeing the parent's pipeline"
