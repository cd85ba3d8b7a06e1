"""``Client`` and ``AsyncClient`` are two shells around one implementation (``nvc.sdk._core``):
the same operations with the same parameters and documentation, plain on one, awaited on the
other."""

from __future__ import annotations

import inspect

import pytest

from nvc.sdk import AsyncClient, Client
from nvc.sdk._core import OPERATIONS, Blocking, Sleep, run_sync


@pytest.mark.parametrize("name", [*OPERATIONS, "compress_many", "decompress_many"])
def test_both_clients_offer_the_operation_with_one_signature(name):
    sync, async_ = getattr(Client, name), getattr(AsyncClient, name)
    assert inspect.signature(sync) == inspect.signature(async_)
    assert sync.__doc__ and sync.__doc__ == async_.__doc__
    if name in OPERATIONS:
        assert not inspect.iscoroutinefunction(sync)
        assert inspect.iscoroutinefunction(async_)


def test_a_plan_gets_the_results_and_the_errors_of_its_requests():
    def plan():
        assert (yield Blocking(lambda x: x + 1, 41)) == 42
        try:
            yield Blocking(int, "not a number")
        except ValueError:
            pass
        else:
            raise AssertionError("the error was not handed to the plan")
        yield Sleep(0)
        return "done"

    assert run_sync(plan()) == "done"


def test_an_error_of_the_plan_itself_reaches_the_caller():
    def plan():
        yield Sleep(0)
        raise KeyError("mine")

    with pytest.raises(KeyError, match="mine"):
        run_sync(plan())
