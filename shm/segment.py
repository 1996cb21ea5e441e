"""POSIX shared-memory segments without multiprocessing's resource tracker.

`multiprocessing.shared_memory` registers every segment with a tracker process that unlinks it when
*any* attaching process exits, which breaks segments shared between the core and its workers. We open
segments directly and decide ourselves who unlinks what.
"""
from __future__ import annotations

import errno
import mmap
import os
import re

import _posixshmem  # CPython's thin binding to shm_open/shm_unlink (Unix only)

# A plain POSIX shm name: one leading slash, no other slash, no "..", a sane length.
_NAME_RE = re.compile(r"^/?[A-Za-z0-9_.\-]{1,200}$")


class ShmError(OSError):
    """A segment could not be created, opened or mapped."""


class ShmExhausted(ShmError):
    """No space left for shared memory (e.g. /dev/shm is full)."""


def valid_name(name: str) -> bool:
    """True for a plain POSIX shm name such as `/my_region` (no path traversal)."""
    return bool(_NAME_RE.match(name)) and ".." not in name and name.strip("/") not in ("", ".")


def _posix(name: str) -> str:
    return name if name.startswith("/") else "/" + name


class Segment:
    """One mapped segment. Closing unmaps; `unlink` removes the name."""

    __slots__ = ("name", "size", "_mmap", "buf", "_owner", "identity")

    def __init__(self, name: str, size: int, mm: mmap.mmap, owner: bool, identity: tuple[int, int] = (0, 0)) -> None:
        self.name = name
        self.size = size
        self._mmap = mm
        self.buf = memoryview(mm)
        self._owner = owner
        # (device, inode) of the object mapped: a segment re-created under the same name differs
        self.identity = identity

    @classmethod
    def create(cls, name: str, size: int) -> "Segment":
        """Create and map a new segment of `size` bytes, with its pages reserved up front.

        Reserving (posix_fallocate) turns "no room in /dev/shm" into an error here instead of a
        SIGBUS later when the pages are first touched.
        """
        if size <= 0:
            raise ValueError("segment size must be positive")
        try:
            fd = _posixshmem.shm_open(_posix(name), os.O_CREAT | os.O_EXCL | os.O_RDWR, mode=0o600)
        except OSError as exc:
            raise ShmError(f"cannot create shared memory '{name}': {exc.strerror}") from exc
        try:
            try:
                os.ftruncate(fd, size)
                if hasattr(os, "posix_fallocate"):
                    os.posix_fallocate(fd, 0, size)
            except OSError as exc:
                _posixshmem.shm_unlink(_posix(name))
                if exc.errno in (errno.ENOSPC, errno.ENOMEM, errno.EFBIG):
                    raise ShmExhausted(
                        f"out of shared memory: cannot reserve {size} bytes for '{name}' "
                        f"({exc.strerror}); free space in /dev/shm or lower the load"
                    ) from exc
                raise ShmError(f"cannot size shared memory '{name}': {exc.strerror}") from exc
            mm = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        return cls(name, size, mm, owner=True)

    @classmethod
    def attach(cls, name: str, writable: bool = True) -> "Segment":
        """Map an existing segment by name, whole."""
        flags = os.O_RDWR if writable else os.O_RDONLY
        try:
            fd = _posixshmem.shm_open(_posix(name), flags, mode=0o600)
        except FileNotFoundError as exc:
            raise ShmError(f"shared memory '{name}' does not exist") from exc
        except OSError as exc:
            raise ShmError(f"cannot open shared memory '{name}': {exc.strerror}") from exc
        try:
            st = os.fstat(fd)
            size = st.st_size
            if size == 0:
                raise ShmError(f"shared memory '{name}' has size 0")
            access = mmap.ACCESS_WRITE if writable else mmap.ACCESS_READ
            mm = mmap.mmap(fd, size, access=access)
        finally:
            os.close(fd)
        return cls(name, size, mm, owner=False, identity=(st.st_dev, st.st_ino))

    def close(self) -> None:
        """Unmap. Views handed out earlier must be gone; if one is still alive the map stays open."""
        try:
            self.buf.release()
        except (BufferError, ValueError):
            return
        try:
            self._mmap.close()
        except BufferError:
            pass

    def unlink(self) -> None:
        unlink(self.name)


def unlink(name: str) -> None:
    """Remove a segment name; a missing one is fine."""
    try:
        _posixshmem.shm_unlink(_posix(name))
    except FileNotFoundError:
        pass


def segment_size(name: str) -> int:
    """Current size of an existing segment (raises ShmError when it does not exist)."""
    try:
        fd = _posixshmem.shm_open(_posix(name), os.O_RDONLY, mode=0o600)
    except OSError as exc:
        raise ShmError(f"shared memory '{name}' cannot be opened: {exc.strerror}") from exc
    try:
        return os.fstat(fd).st_size
    finally:
        os.close(fd)


def _open_checked(name: str, flags: int, offset: int, nbytes: int) -> int:
    """An fd of segment `name` whose current size holds [offset, offset + nbytes) (else ShmError)."""
    try:
        fd: int = _posixshmem.shm_open(_posix(name), flags, mode=0o600)
    except FileNotFoundError as exc:
        raise ShmError(f"shared memory '{name}' does not exist") from exc
    except OSError as exc:
        raise ShmError(f"cannot open shared memory '{name}': {exc.strerror}") from exc
    try:
        size = os.fstat(fd).st_size
    except OSError:
        os.close(fd)
        raise
    if offset < 0 or nbytes < 0 or offset + nbytes > size:
        os.close(fd)
        raise ShmError(f"shared memory '{name}': range [{offset}, {offset + nbytes}) is outside its {size} bytes")
    return fd


# Reading and writing a *client's* segment go through the file descriptor, never a mapping: a client
# may shrink (ftruncate) its segment at any moment, and touching a mapped page past the new end is
# a SIGBUS that would kill the whole worker with every request in it. pread/pwrite instead return
# short counts, which fail just the one request. Nothing stays mapped or open afterwards either.
def read_into(name: str, offset: int, buf: memoryview) -> None:
    """Fill `buf` (writable, bytes) from segment `name` at `offset`; ShmError if it is too small."""
    want = buf.nbytes
    fd = _open_checked(name, os.O_RDONLY, offset, want)
    try:
        done = 0
        while done < want:
            n = os.preadv(fd, [buf[done:]], offset + done)
            if n <= 0:
                raise ShmError(f"shared memory '{name}' shrank while it was being read")
            done += n
    finally:
        os.close(fd)


def write_from(name: str, offset: int, data: memoryview) -> None:
    """Write `data` (bytes) into segment `name` at `offset`; ShmError if the segment is too small.

    A segment shrunk between the size check and the write grows back (pwrite extends a file), which
    harms only the client that shrank it."""
    want = data.nbytes
    fd = _open_checked(name, os.O_RDWR, offset, want)
    try:
        done = 0
        while done < want:
            n = os.pwrite(fd, data[done:], offset + done)
            if n <= 0:
                raise ShmError(f"shared memory '{name}': write failed after {done} of {want} bytes")
            done += n
    finally:
        os.close(fd)


def identity_of(name: str) -> tuple[int, int, int] | None:
    """(device, inode, size) of the segment now behind `name`, or None when there is none."""
    try:
        fd = _posixshmem.shm_open(_posix(name), os.O_RDONLY, mode=0o600)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        return st.st_dev, st.st_ino, st.st_size
    finally:
        os.close(fd)


def unlink_prefix(prefix: str, shm_dir: str = "/dev/shm") -> list[str]:
    """Unlink every segment whose name starts with `prefix` (Linux: listed in /dev/shm)."""
    removed: list[str] = []
    bare = prefix.lstrip("/")
    try:
        names = os.listdir(shm_dir)
    except OSError:
        return removed
    for entry in names:
        if entry.startswith(bare):
            unlink("/" + entry)
            removed.append("/" + entry)
    return removed


def sweep_orphans(prefix: str = "tritonpy_", shm_dir: str = "/dev/shm") -> list[str]:
    """Unlink segments `<prefix><pid>_…` whose owning server process no longer exists.

    A server killed with SIGKILL cannot clean up after itself (its workers die with it through the
    parent-death signal and cannot either); the next server start removes what they left.
    """
    removed: list[str] = []
    try:
        names = os.listdir(shm_dir)
    except OSError:
        return removed
    for entry in names:
        if not entry.startswith(prefix):
            continue
        pid_text = entry[len(prefix):].split("_", 1)[0]
        if not pid_text.isdigit():
            continue
        pid = int(pid_text)
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
            continue  # still alive: not ours to touch
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        unlink("/" + entry)
        removed.append("/" + entry)
    return removed
