"""``configure``: from a request to a container that has the driver, or to one error line and nothing changed.

Order of work, as libnvidia-container: check privileges and input, ask NVML (driver version, GPUs), select the
devices, check the image's requirements, read the image's layout, plan (all of it :func:`nvc.plan.build.build_plan`),
then apply the plan inside the container's mount namespace (or print it with ``--dry-run``).
"""

from __future__ import annotations

import os
import sys

from nvc.errors import NvcError
from nvc.record import replace
from nvc.request.configure_request import ConfigureRequest

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up cost)
if TYPE_CHECKING:
    from nvc.debuglog import DebugLog
    from nvc.request.options import GlobalOptions


def _check_alive(pid: int) -> None:
    """The container's process must still run: gone, or exited and not yet reaped (a zombie has no mount
    namespace left -- what runsc's gofer is when it died before calling us)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read(512)
    except OSError:
        raise NvcError("container", f"process {pid} not found") from None
    state = stat[stat.rfind(b")") + 2:][:1]
    if state in (b"Z", b"X"):
        raise NvcError("container", f"process {pid} has exited (the container or runsc's gofer died before "
                                    "configure ran)")


def configure_container(
    opts: GlobalOptions, request: ConfigureRequest, dry_run: bool = False, log: DebugLog | None = None
) -> list[str]:
    """Run configure; returns lines to print (the plan for ``--dry-run``, warnings otherwise)."""
    from nvc.plan.planner import describe

    if not dry_run and os.geteuid() != 0:
        raise NvcError("permission", "superuser privileges required (configure mounts into the container)")
    if request.pid is not None:
        _check_alive(request.pid)
    if not request.gvisor:
        from nvc.request.gvisor import is_gofer

        if is_gofer(request.pid):
            request = replace(request, gvisor=True, no_cgroups=True)
    from nvc.plan.build import build_plan

    plan = build_plan(opts, request)
    if dry_run:
        return [describe(op) for op in plan.operations]
    from nvc.apply.executor import apply_plan
    from nvc.debuglog import DebugLog

    exec_ldconfig = request.exec_ldconfig or os.environ.get("NVC_EXEC_LDCONFIG", "") not in ("", "0")
    return apply_plan(plan, request.pid, log or DebugLog(opts.debug), write_ldcache=not exec_ldconfig)


def run_configure(opts, request, dry_run: bool) -> None:
    """The configure command's body, whichever parser read the line (tests replace it to compare the parsers)."""
    lines = configure_container(opts, request, dry_run=dry_run)
    write = sys.stdout.write
    for line in lines:
        write(f"{line}\n")
    sys.stdout.flush()
