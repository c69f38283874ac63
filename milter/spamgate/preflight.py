"""Pre-flight checks: a built Policy against the machine it is to run on.

For now the audit of files that hold secrets, which `spamgate run`, `check-config` and each
reload ask for.
"""

from __future__ import annotations

import stat
from pathlib import Path

from spamgate.policy import Policy


def exposed_secret_files(policy: Policy, source: str | Path) -> list[str]:
    """A warning for each file holding an access key that other users may read, or that
    the group or other users may write (and so swap the key, or the whole policy, for theirs):
    key files, and the policy file `source` when a zone in it holds a key.

    Group read is fine: the recommended set-up is owner root, group spamgate, mode 0640.
    """
    holders: dict[Path, list[str]] = {}
    for dns_list in policy.dns_lists:
        if dns_list.key_path is not None:
            holders.setdefault(dns_list.key_path, []).append(dns_list.name)
        elif dns_list.access_key:
            holders.setdefault(Path(source), []).append(dns_list.name)
    state_password = policy.uses_state and policy.state.store_shown != policy.state.store
    if state_password:
        holders.setdefault(Path(source), [])
    warnings = []
    for path, names in holders.items():
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
        except OSError:  # read a moment ago; if it has gone, the next load says so
            continue
        problems = []
        if mode & 0o004:
            problems.append("other users can read it")
        if mode & 0o022:
            problems.append("group or other users can write it")
        if not problems:
            continue
        advice = "chmod 0640, group spamgate"
        if path == Path(source) and names:
            advice += ", or move the key to a key_file"
        held = [f"the access key of {', '.join(names)}"] if names else []
        if path == Path(source) and state_password:
            held.append("the Redis password of state.store")
        warnings.append(
            f"secret file {path} has mode {mode:04o}: {' and '.join(problems)}, and it holds "
            f"{' and '.join(held)} ({advice})"
        )
    return warnings
