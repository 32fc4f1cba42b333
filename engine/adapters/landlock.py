"""Landlock and prctl through ctypes: the kernel interface the sandbox is built on.

linux/landlock.h's three syscalls (the same numbers on every architecture), access-right bits by
ABI version, rulesets built in the parent, and the per-thread restrict step; ``prctl`` for
``no_new_privs`` and the child subreaper. No policy here: what a stage may do is
:mod:`engine.adapters.sandbox`'s.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from engine.errors import EngineError

T = TypeVar("T")


class SandboxError(EngineError):
    """The sandbox could not be set up, or a stage was refused for want of it."""


# linux/landlock.h
_CREATE, _ADD_RULE, _RESTRICT = 444, 445, 446  # the same on every architecture
_VERSION, _PATH_BENEATH = 1, 1
EXECUTE, WRITE_FILE, READ_FILE, READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
REMOVE_DIR, REMOVE_FILE, MAKE_CHAR, MAKE_DIR, MAKE_REG = 1 << 4, 1 << 5, 1 << 6, 1 << 7, 1 << 8
MAKE_SOCK, MAKE_FIFO, MAKE_BLOCK, MAKE_SYM = 1 << 9, 1 << 10, 1 << 11, 1 << 12
REFER, TRUNCATE, IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15  # ABI 2, 3, 5
SCOPE_SIGNAL = 1 << 1  # ABI 6
_FILE_RIGHTS = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV  # the only rights a file rule may carry
_PR_SET_NO_NEW_PRIVS, _PR_SET_CHILD_SUBREAPER, _PR_GET_CHILD_SUBREAPER = 38, 36, 37


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("fs", ctypes.c_uint64), ("net", ctypes.c_uint64), ("scoped", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


_libc: Any = None
_abi: int | None = None


def _lib() -> Any:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def _sys(*args: Any) -> int:
    return int(_lib().syscall(*args))


def _prctl(option: int, arg: int) -> int:
    return int(_lib().prctl(ctypes.c_int(option), ctypes.c_ulong(arg), ctypes.c_ulong(0), ctypes.c_ulong(0),
                           ctypes.c_ulong(0)))


def landlock_abi() -> int:
    """The kernel's Landlock ABI version, 0 where there is none (not Linux, disabled, too old)."""
    global _abi
    if _abi is None:
        _abi = 0
        if sys.platform.startswith("linux"):
            with contextlib.suppress(OSError, AttributeError):
                _abi = max(0, _sys(ctypes.c_long(_CREATE), None, ctypes.c_size_t(0), ctypes.c_uint32(_VERSION)))
    return _abi


class _Ruleset:
    def __init__(self, abi: int, handled: int, scoped: int = 0) -> None:
        attr = _RulesetAttr(handled, 0, scoped)
        size = 24 if scoped else (16 if abi >= 4 else 8)
        fd = _sys(ctypes.c_long(_CREATE), ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
        if fd < 0:
            e = ctypes.get_errno()
            raise SandboxError(f"landlock: cannot create a ruleset ({os.strerror(e)})")
        self.fd, self.handled = fd, handled

    def allow(self, path: str, access: int) -> bool:
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            if not os.path.isdir(f"/proc/self/fd/{fd}"):
                access &= _FILE_RIGHTS
            rule = _PathBeneath(access & self.handled, fd)
            if not rule.allowed:
                return True
            if _sys(ctypes.c_long(_ADD_RULE), ctypes.c_int(self.fd), ctypes.c_int(_PATH_BENEATH),
                    ctypes.byref(rule), ctypes.c_uint32(0)) != 0:
                e = ctypes.get_errno()
                raise SandboxError(f"landlock: cannot add a rule for {path} ({os.strerror(e)})")
            return True
        finally:
            os.close(fd)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


def _write_rights(abi: int) -> int:
    w = WRITE_FILE | REMOVE_DIR | REMOVE_FILE | MAKE_CHAR | MAKE_DIR | MAKE_REG | MAKE_SOCK | MAKE_FIFO
    w |= MAKE_BLOCK | MAKE_SYM
    return w | (REFER if abi >= 2 else 0) | (TRUNCATE if abi >= 3 else 0) | (IOCTL_DEV if abi >= 5 else 0)


def _read_rights(abi: int) -> int:
    return EXECUTE | READ_FILE | READ_DIR | (REFER if abi >= 2 else 0)


def _spawn_confined(layers: list[int], start: Callable[[], T]) -> T:
    """Run ``start`` (which forks the stage) on a throwaway thread confined by ``layers``."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            if _prctl(_PR_SET_NO_NEW_PRIVS, 1) != 0:
                raise SandboxError(f"prctl(NO_NEW_PRIVS) failed ({os.strerror(ctypes.get_errno())})")
            for fd in layers:
                if _sys(ctypes.c_long(_RESTRICT), ctypes.c_int(fd), ctypes.c_uint32(0)) != 0:
                    raise SandboxError(f"landlock_restrict_self failed ({os.strerror(ctypes.get_errno())})")
            box["ok"] = start()
        except BaseException as e:  # re-raised on the caller's thread
            box["err"] = e

    t = threading.Thread(target=target, name="certus-confine")
    t.start()
    t.join()
    if "err" in box:
        raise box["err"]
    return box["ok"]  # type: ignore[no-any-return]


def set_subreaper(on: bool) -> bool:
    """Make this process adopt orphaned descendants (Linux); returns whether it was one before."""
    if not sys.platform.startswith("linux"):
        return False
    was = ctypes.c_int(0)
    _lib().prctl(ctypes.c_int(_PR_GET_CHILD_SUBREAPER), ctypes.byref(was), ctypes.c_ulong(0), ctypes.c_ulong(0),
                ctypes.c_ulong(0))
    _prctl(_PR_SET_CHILD_SUBREAPER, 1 if on else 0)
    return bool(was.value)
