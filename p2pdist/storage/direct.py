"""Direct I/O: chunk bytes move between the disk and our own reused buffers, past the
page cache.

Why: every chunk is written once and read back a few times (to the next peer, to
dockerd). Through the page cache each GiB stored takes a GiB of memory the kernel has
not touched lately, and on a VM whose free memory is handed back to the host
(virtio-balloon free page reporting) touching it costs 1.5–2.5 CPU-s per GiB in host
faults — half of the tracker's and of the peer's CPU in a cold pull (perf:
``copy_folio_from_iter_atomic``). ``O_DIRECT`` writes and reads cost ~0.25 and ~0.06
CPU-s per GiB here and leave the page cache (which also counts against a pod's memory
limit) to the node's real work.

The kernel asks the buffer address, the file offset and the length to be block
aligned: buffers come from :func:`aligned_buffer` (page aligned, reused), and a short
tail or a misaligned buffer goes through the page cache instead (a few KiB). A file
system without ``O_DIRECT`` (the open fails) is used through the page cache.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
import os

ALIGN = 4096  # the largest logical block size in common use; a multiple of every smaller one

__all__ = ["ALIGN", "AlignedBuffers", "aligned_buffer", "is_aligned", "is_direct", "set_direct",
           "read_span", "write_direct_head"]


def aligned_buffer(size: int) -> mmap.mmap:
    """A writable, page-aligned buffer of ``size`` bytes (anonymous memory). Allocate once
    and reuse: fresh memory is what this module avoids."""
    return mmap.mmap(-1, max(size, 1))


class AlignedBuffers:
    """Aligned buffers of ``size`` bytes, reused. Nobody waits for one: past ``keep`` in
    use at once a caller gets a fresh one, dropped after (a stalled user must not hold
    up the others). Safe from any thread (list pop/append are atomic)."""

    def __init__(self, size: int, keep: int = 8):
        self.size = size
        self.keep = keep
        self._free: list[mmap.mmap] = []

    def get(self) -> mmap.mmap:
        try:
            return self._free.pop()
        except IndexError:
            return aligned_buffer(self.size)

    def put(self, buf: mmap.mmap) -> None:
        if len(buf) == self.size and len(self._free) < self.keep:
            self._free.append(buf)


def is_aligned(view: memoryview) -> bool:
    """Whether ``view`` starts on an :data:`ALIGN` boundary (False for read-only buffers,
    whose address we do not ask)."""
    if view.readonly or not view.c_contiguous or view.nbytes == 0:
        return False
    try:
        addr = ctypes.addressof(ctypes.c_char.from_buffer(view))
    except (TypeError, ValueError):
        return False
    return addr % ALIGN == 0


def is_direct(fd: int) -> bool:
    return bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT)


def set_direct(fd: int, on: bool) -> None:
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_DIRECT if on else flags & ~os.O_DIRECT)


def write_direct_head(fd: int, view: memoryview) -> memoryview:
    """Write the block-aligned head of ``view`` to ``fd`` (opened ``O_DIRECT``, at an
    aligned offset) straight from the buffer; return what is left (the tail, or all of
    it if the buffer is misaligned or the kernel refuses) for a page-cache write, with
    ``O_DIRECT`` already cleared on ``fd``."""
    if is_aligned(view):
        head = view.nbytes - view.nbytes % ALIGN
        done = 0
        while done < head:
            try:
                done += os.write(fd, view[done:head])
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                break  # a device with bigger blocks: the page cache takes the rest
            if done % ALIGN:
                break  # a short write off a block boundary: the rest cannot go direct
        view = view[done:]
    set_direct(fd, False)
    return view


def read_span(fd: int, buf: mmap.mmap | memoryview, offset: int, want: int) -> memoryview:
    """Up to ``want`` bytes of ``fd`` from ``offset``, read into ``buf`` (which must hold
    ``want + 2 * ALIGN`` bytes); a view of them in ``buf``, shorter only at the end of
    the file. On an ``O_DIRECT`` fd the read covers whole blocks around the span; if the
    kernel refuses it, ``O_DIRECT`` is cleared on ``fd`` and the span read plainly."""
    view = memoryview(buf)
    if is_direct(fd):
        start = offset - offset % ALIGN
        skip = offset - start
        length = -(-(skip + want) // ALIGN) * ALIGN
        if length <= view.nbytes:
            try:
                n = os.preadv(fd, [view[:length]], start)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                set_direct(fd, False)
            else:
                return view[skip:skip + max(0, min(want, n - skip))]
        else:
            set_direct(fd, False)
    n = os.preadv(fd, [view[:want]], offset)
    return view[:n]
