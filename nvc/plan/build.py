"""From a request to its plan: everything the pure planner (:mod:`nvc.plan.planner`) needs, gathered in order.

Order of work, as libnvidia-container: check the request, ask NVML (driver version, GPUs) through the host
inventory, select the devices, check the image's requirements, read the image's layout, then plan. ``configure``
applies the result (:mod:`nvc.commands.configure`), the runtime shim and ``nvc oci-edits`` turn it into spec edits
(:mod:`nvc.emit.oci_edits`): all three start here, so they plan the same container alike.
"""

from __future__ import annotations

import os

from nvc.errors import NvcError
from nvc.request.configure_request import ConfigureRequest
from nvc.request.device_select import imex_channel_numbers, mig_option_enabled, select_devices

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up cost)
if TYPE_CHECKING:
    from nvc.plan.planner import Plan
    from nvc.request.options import GlobalOptions


def build_plan(opts: GlobalOptions, request: ConfigureRequest) -> Plan:
    """Everything up to the plan: NVML, device selection, requirements, image layout."""
    from nvc.host.inventory import build_inventory
    from nvc.plan.planner import plan_configure
    from nvc.request.container_layout import inspect_rootfs

    requirements = None
    if request.requirements:  # most containers have none: keep the expression parser off the hot path
        from nvc.request.requirements import parse_requirements

        requirements = parse_requirements(request.requirements)
    if request.gvisor:
        from nvc.request.gvisor import check_capabilities

        check_capabilities(request.capabilities)
    if not os.path.isdir(request.rootfs):
        raise NvcError("input", f"invalid rootfs directory: {request.rootfs}")
    inventory = build_inventory(opts.driver_root, opts.ldcache, opts.user, load_kmods=opts.load_kmods)
    driver = inventory.driver_info
    assert driver is not None  # build_inventory raises when NVML fails unless asked not to
    selection = select_devices(request.devices, driver.gpus)
    if request.gvisor:
        from nvc.request.gvisor import check_minors

        check_minors([gpu.minor for gpu in selection.gpus])
    if requirements is not None:
        from nvc.request.requirements import check_requirements

        check_requirements(requirements, driver, selection.gpus)
    mig_config = mig_option_enabled(request.mig_config, selection.gpus)
    mig_monitor = mig_option_enabled(request.mig_monitor, selection.gpus)
    layout = inspect_rootfs(request.rootfs)
    return plan_configure(inventory, request, layout, selection, mig_config, mig_monitor,
                          imex_channel_numbers(request.imex_channels))
