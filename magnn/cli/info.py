"""`magnn info` (versions, devices, usable backends) and `magnn build-ext`."""
from __future__ import annotations

import importlib
import platform

# -- info, build-ext -----------------------------------------------------------------------------

def _version(module_name: str) -> str:
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # a broken install should still be reported, not crash info
        return f"not importable ({type(error).__name__}: {error})"
    return getattr(module, "__version__", "installed")


def cmd_info(args) -> int:
    import torch

    from .. import __version__
    from ..functional import AUTO_ORDER, BACKENDS, select_backend

    print(f"magnn {__version__} on Python {platform.python_version()} ({platform.machine()})")
    for name, module in (("torch", "torch"), ("triton", "triton"), ("torch_geometric", "torch_geometric"),
                         ("ogb", "ogb"), ("rdkit", "rdkit"), ("scipy", "scipy"), ("torch_scatter", "torch_scatter")):
        print(f"  {name:16s} {_version(module)}")
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            print(f"  cuda:{index}           {torch.cuda.get_device_name(index)}")
        devices.append(torch.device("cuda"))
    else:
        print("  cuda             no CUDA device visible (torch.cuda.is_available() is False)")
    print("backends:")
    for device in devices:
        for name, backend in BACKENDS.items():
            if name == "cpu" and device.type != "cpu":
                continue
            reason = backend.reason_unavailable(device, torch.float32)
            state = "usable" if reason is None else f"not usable: {reason}"
            print(f"  {device.type:5s} {name:7s} {state}")
        auto = select_backend("auto", device, torch.float32).name
        print(f"  {device.type:5s} auto -> {auto} (preference {' > '.join(AUTO_ORDER.get(device.type, ('torch',)))})")
    return 0


def cmd_build_ext(args) -> int:
    from ..backends.cpu import build

    path = build(verbose=args.verbose)
    print(f"built the C++ CPU kernels: {path}")
    return 0


def add_info(commands) -> None:
    info = commands.add_parser("info", help="versions, devices and which backends run here (and why not)")
    info.set_defaults(func=cmd_info)


def add_build_ext(commands) -> None:
    build = commands.add_parser("build-ext", help="compile the C++ CPU kernels now instead of on first use")
    build.add_argument("--verbose", action="store_true")
    build.set_defaults(func=cmd_build_ext)


