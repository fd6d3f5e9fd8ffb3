"""Who besides root can change the policy, and so Ollama's environment (through the drop-in
that apply-override writes as root) and which models are loaded or pulled."""

from __future__ import annotations

import grp
import os
import pwd
import stat
from dataclasses import dataclass


@dataclass(frozen=True)
class FileRisk:
    """Someone besides root can change the policy, and so Ollama's environment (through the
    drop-in apply-override writes as root) and which models are loaded or pulled."""

    message: str
    anyone: bool  # every local user can, not only a group or one user


def _private_group(info: os.stat_result) -> bool:
    """Is the file's group the owner's own group with nobody else in it (the user private
    groups of Debian and others, where a umask of 002 makes files group-writable)?"""
    try:
        owner = pwd.getpwuid(info.st_uid)
        group = grp.getgrgid(info.st_gid)
    except KeyError:
        return False
    return owner.pw_gid == info.st_gid and not [m for m in group.gr_mem if m != owner.pw_name]


def _writers(info: os.stat_result, what: str, directory: bool) -> list[FileRisk]:
    mode = info.st_mode
    risks = []
    if directory and mode & stat.S_ISVTX:
        return []  # sticky (/tmp): others cannot replace a file they do not own
    verb = "replace the policy in it" if directory else "change it"
    if mode & stat.S_IWOTH:
        risks.append(FileRisk(f"{what} is world-writable: any local user can {verb}", True))
    elif mode & stat.S_IWGRP and info.st_gid != 0 and not _private_group(info):
        risks.append(
            FileRisk(f"{what} is group-writable (gid {info.st_gid}): that group can {verb}", False)
        )
    if info.st_uid not in (0, os.geteuid()):
        risks.append(FileRisk(f"{what} is owned by uid {info.st_uid}, who can {verb}", False))
    return risks


def file_risks(path: str) -> tuple[FileRisk, ...]:
    """Who besides root (and the caller) can change the policy at ``path``: the file itself
    (through a symlink, the file it points to), and the directories holding the link and the
    file. Empty when only root can; unreadable places are skipped (loading reports them)."""
    risks: list[FileRisk] = []
    real = os.path.realpath(path)
    try:
        risks += _writers(
            os.stat(real),
            "the policy file"
            if real == os.path.abspath(path)
            else f"the policy file ({path} -> {real})",
            False,
        )
    except OSError:
        return ()
    directories = dict.fromkeys(os.path.dirname(p) or "." for p in (os.path.abspath(path), real))
    for directory in directories:
        try:
            risks += _writers(os.stat(directory), f"its directory {directory}", True)
        except OSError:
            continue
    return tuple(risks)
