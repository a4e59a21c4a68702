from nvc.host.proc_driver import parse_device_majors, parse_mig_minors, parse_nvrm_version


def test_nvrm_version_proprietary_and_open():
    prop = ("NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.309.01  Tue Oct  1 00:00:00 UTC 2024\n"
            "GCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n")
    open_km = "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  550.54.15  Release Build  (dvs-builder@U16)\n"
    assert parse_nvrm_version(prop) == "535.309.01"
    assert parse_nvrm_version(open_km) == "550.54.15"
    assert parse_nvrm_version("garbage") is None


def test_mig_minors():
    text = "config 1\nmonitor 2\ngpu0/gi1/access 12\ngpu0/gi1/ci0/access 13\nbad line here\n"
    assert parse_mig_minors(text) == {"config": 1, "monitor": 2, "gpu0/gi1/access": 12, "gpu0/gi1/ci0/access": 13}


def test_device_majors_char_section_only():
    text = "Character devices:\n  1 mem\n195 nvidia-frontend\n510 nvidia-uvm\n\nBlock devices:\n  8 sd\n"
    assert parse_device_majors(text) == {"mem": 1, "nvidia-frontend": 195, "nvidia-uvm": 510}


def test_params_rewrite_only_touches_modify_device_files():
    from nvc.host.proc_driver import rewrite_params

    text = "ResmanDebugLevel: 4294967295\nModifyDeviceFiles: 1\nDeviceFileUID: 0\n"
    assert rewrite_params(text) == "ResmanDebugLevel: 4294967295\nModifyDeviceFiles: 0\nDeviceFileUID: 0\n"
    assert rewrite_params("ModifyDeviceFiles: 1") == "ModifyDeviceFiles: 0"


def test_proc_bus_id():
    from nvc.host.proc_driver import proc_bus_id

    assert proc_bus_id("00000000:3B:00.0") == "0000:3b:00.0"
    assert proc_bus_id("00010000:af:00.0") == "10000:af:00.0"
