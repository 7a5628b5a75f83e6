"""How freed buffers go back to the system: refused off glibc, with a warning."""

def test_buffers_that_cannot_be_returned_to_the_system_are_reported(monkeypatch, caplog):
    """Off glibc (musl, macOS) mallopt is missing or refuses: a warning says the memory bound does not hold."""
    import ctypes

    from motfm_core import allocator

    class NoMallopt:
        def __init__(self, name):
            pass

    monkeypatch.setattr(ctypes, "CDLL", NoMallopt)
    with caplog.at_level("WARNING", logger="motfm_core.allocator"):
        assert allocator.mmap_large_buffers() is False
    assert "cannot set the C library's mmap threshold" in caplog.text


def test_freed_heap_memory_goes_back_to_the_system_after_a_trim():
    """Many mid-sized arrays (below glibc's mmap threshold: kept in the heap when freed) allocated and freed: the
    process's resident memory falls back once `trim_freed` runs."""
    import numpy as np
    import psutil

    from motfm_core.allocator import trim_freed

    me = psutil.Process()
    before = me.memory_info().rss
    blocks = [np.ones(2**15) for _ in range(4000)]  # 256 KiB each, 1 GiB in all, from the heap
    del blocks[:-1]  # the last one pins the heap's top: glibc's automatic trim cannot shrink it
    held = me.memory_info().rss
    assert trim_freed() is True
    assert held - before > 2**29 and me.memory_info().rss < before + 2**28
