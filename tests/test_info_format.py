"""`info` output layouts, byte for byte."""

from nvc.driver_info import DriverInfo, GpuInfo
from nvc.emit.listing import format_info_csv, format_info_text, info_json

INFO = DriverInfo(
    "550.54.15",
    "12.4",
    (
        GpuInfo(0, 0, "Tesla K80", "Tesla", "GPU-03bb5927-ceaa-4166-ff1e-1d58a8cbf883", "00000000:05:00.0", "3.7"),
        GpuInfo(1, 3, "NVIDIA A100", "Tesla", "GPU-0aaa", "00000000:3b:00.0", "8.0"),
    ),
)


def test_text_layout():
    assert format_info_text(INFO) == (
        "NVRM version:   550.54.15\n"
        "CUDA version:   12.4\n"
        "\n"
        "Device Index:   0\n"
        "Device Minor:   0\n"
        "Model:          Tesla K80\n"
        "Brand:          Tesla\n"
        "GPU UUID:       GPU-03bb5927-ceaa-4166-ff1e-1d58a8cbf883\n"
        "Bus Location:   00000000:05:00.0\n"
        "Architecture:   3.7\n"
        "\n"
        "Device Index:   1\n"
        "Device Minor:   3\n"
        "Model:          NVIDIA A100\n"
        "Brand:          Tesla\n"
        "GPU UUID:       GPU-0aaa\n"
        "Bus Location:   00000000:3b:00.0\n"
        "Architecture:   8.0\n"
    )


def test_csv_layout():
    assert format_info_csv(INFO) == (
        "NVRM version,CUDA version\n"
        "550.54.15,12.4\n"
        "\n"
        "Device Index,Device Minor,Model,Brand,GPU UUID,Bus Location,Architecture\n"
        "0,0,Tesla K80,Tesla,GPU-03bb5927-ceaa-4166-ff1e-1d58a8cbf883,00000000:05:00.0,3.7\n"
        "1,3,NVIDIA A100,Tesla,GPU-0aaa,00000000:3b:00.0,8.0\n"
    )


def test_json_names_device_by_minor():
    data = info_json(INFO)
    assert data["nvrm_version"] == "550.54.15"
    assert [d["device_path"] for d in data["devices"]] == ["/dev/nvidia0", "/dev/nvidia3"]
