"""``gc_paused``: the cyclic collector is off inside and as it was after (also after an exception)."""

import gc

import pytest

from mmjax.gc_pause import gc_paused


def test_the_collector_is_off_inside_and_on_after():
    assert gc.isenabled()
    with gc_paused():
        assert not gc.isenabled()
    assert gc.isenabled()


def test_an_exception_inside_turns_it_back_on():
    with pytest.raises(ValueError), gc_paused():
        raise ValueError("boom")
    assert gc.isenabled()


def test_a_collector_the_user_turned_off_stays_off():
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_as_a_decorator_and_after_import_mmjax():
    import mmjax  # noqa: F401  (its import pauses the collector)

    @gc_paused()
    def inside() -> bool:
        return gc.isenabled()

    assert not inside()
    assert gc.isenabled()
