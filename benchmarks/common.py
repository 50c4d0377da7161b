"""Shared pieces of the benchmarks: model widths of the paper, timing, result files.

Timings are compared inside one process, interleaved, as ratios of medians: these machines
are shared and noisy, absolute times are not comparable between runs.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"
SHARED_DATA = Path(os.environ.get("FAIRCHEM_DEQ_DATA", Path(__file__).parents[1] / ".." / "shared" / "data"))
TEST_DATA = Path(__file__).parents[1] / "tests" / "data"

# The paper's MD "mini" model and its OC20 S2EF-200k width (see configs/).
MD_MINI = dict(
    use_pbc=True, otf_graph=True, max_neighbors=1000, max_radius=5.0, max_num_elements=90,
    sphere_channels=64, attn_hidden_channels=16, num_heads=4, attn_alpha_channels=16,
    attn_value_channels=8, ffn_hidden_channels=128, norm_type="rms_norm_sh",
    lmax_list=[3], mmax_list=[2], grid_resolution=14, num_sphere_samples=128,
    edge_channels=32, alpha_drop=0.0, drop_path_rate=0.05,
)
OC20_200K = dict(
    MD_MINI, max_neighbors=20, max_radius=12.0, sphere_channels=128, attn_hidden_channels=64,
    num_heads=8, attn_alpha_channels=64, attn_value_channels=16, ffn_hidden_channels=128,
    grid_resolution=18, edge_channels=128,
)
HEADS = {
    "energy": {"module": "equiformerV2_scalar_head"},
    "forces": {"module": "equiformerV2_vector_head"},
}


def build_model(width: dict, num_layers: int, deq: dict | None = None, seed: int = 0):
    """Hydra model: DEQ backbone when `deq` is given, else fairchem's explicit EquiformerV2."""
    import fairchem_deq  # noqa: F401
    from fairchem.core.models.base import HydraModel

    torch.manual_seed(seed)
    if deq is None:
        backbone = dict(width, model="equiformer_v2_backbone", num_layers=num_layers)
    else:
        backbone = dict(width, model="deq_equiformer_v2_backbone", num_layers=num_layers, deq=deq)
    model = HydraModel(backbone=backbone, heads=HEADS, otf_graph=True)
    # fairchem's explicit backbone forces autograd on in forward; its forces come from a head
    # here too, so turn that off for a like-for-like inference timing.
    model.backbone.direct_forces = True
    return model


def num_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def median_time(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def machine() -> dict:
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def write_json(name: str, payload: dict) -> Path:
    """Atomic write of benchmarks/results/<name>.json."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    fd, tmp = tempfile.mkstemp(dir=RESULTS, prefix=f".{name}.", suffix=".json")
    with os.fdopen(fd, "w") as fh:
        json.dump(payload, fh, indent=2)
    os.chmod(tmp, 0o644)  # mkstemp creates 0600
    os.replace(tmp, path)
    return path


def read_json(name: str) -> dict:
    """benchmarks/results/<name>.json, or {} before its first run (for merging runs)."""
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def save_figure(fig, name: str) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.png"
    tmp = RESULTS / f".{name}.tmp.png"
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    os.replace(tmp, path)
    return path
