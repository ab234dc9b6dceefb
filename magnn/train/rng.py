"""Every random stream a run draws from: seeded at the start, saved in and restored from last.pt.

The saved states are tensors and plain numbers only (Python's and numpy's Mersenne Twister
keys as int64 tensors), so that last.pt loads with torch.load(weights_only=True) and no
unpickling of arbitrary objects; restoring gives back exactly the streams that were saved.
"""
from __future__ import annotations

import random


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Every generator's state as tensors and plain numbers."""
    import numpy as np
    import torch

    version, key, gauss = random.getstate()
    kind, np_key, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": {"version": version, "key": torch.tensor(key, dtype=torch.int64), "gauss": gauss},
        "numpy": {"kind": kind, "key": torch.from_numpy(np_key.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what rng_state saved (or, from a trusted older last.pt, the raw generator states)."""
    import numpy as np
    import torch

    python, numpy_state = state["python"], state["numpy"]
    if isinstance(python, dict):
        python = (python["version"], tuple(int(v) for v in python["key"].tolist()), python["gauss"])
    if isinstance(numpy_state, dict):
        numpy_state = (numpy_state["kind"], numpy_state["key"].numpy().astype(np.uint32), numpy_state["pos"],
                       numpy_state["has_gauss"], numpy_state["cached_gaussian"])
    random.setstate(python)
    np.random.set_state(numpy_state)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
