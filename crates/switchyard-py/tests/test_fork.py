"""A forked child (multiprocessing's default start method on Linux) makes message ids of its
own: it does not continue its parent's run, whose next ids the parent makes too."""

from __future__ import annotations

import os

from switchyard._switchyard import testing


def _ids_across_a_fork() -> tuple[str, str, str]:
    """The parent's last id before the fork, its first after, and the child's first."""
    r, w = os.pipe()
    before = testing.new_message_id()
    pid = os.fork()
    if pid == 0:  # the child: report its first id, leave without running anything else
        try:
            os.write(w, testing.new_message_id().encode())
        finally:
            os._exit(0)
    after = testing.new_message_id()
    os.close(w)
    child = os.read(r, 64).decode()
    os.close(r)
    os.waitpid(pid, 0)
    return before, after, child


def test_a_forked_child_does_not_repeat_its_parents_ids():
    # Within the millisecond of the fork, a child without a run of its own makes exactly the
    # id its parent makes next. A Python process takes about a millisecond to fork here, so
    # this rarely hits that millisecond (core's `after_forget_run_...` test pins the rule
    # itself); it checks that ids stay distinct across forks with the hook registered.
    for _ in range(50):
        before, after, child = _ids_across_a_fork()
        assert len(child) == 26
        assert child not in (before, after), f"child repeated its parent's id {child}"
