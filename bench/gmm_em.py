"""Benchmark: exact EM for a full-covariance Gaussian mixture against scikit-learn's GaussianMixture.

Both sides run EM (Dempster, Laird and Rubin 1977; Bishop 2006, section 9.2.2) on the same
synthetic data, drawn in the script from a known mixture (seeded), from the same initial weights,
means and covariances, for the same fixed number of iterations (``tol=0``, so neither stops early),
with the same ``reg_covar``. "Ours" is :func:`inference.em.em_gmm` on ``--device`` in ``--dtype``;
the baseline is scikit-learn's ``GaussianMixture(covariance_type="full")`` [1] on the CPU in
float64, given the initial parameters as ``weights_init``, ``means_init`` and ``precisions_init``.
Each does one E-step more than M-steps (scikit-learn's final E-step, our first), so the work is
the same. The final mean log-likelihoods must agree (float64: to ~1e-8 nats per datum; the
difference is reported). The two take turns within each repeat, so a busy machine slows them
alike; the medians are reported. On a GPU the run is also set against the memory floor: one EM
iteration must read the data at least once (``bytes_per_iter``), which at the device's bandwidth
takes ``roofline_s`` for all iterations. Prints one JSON object.

References:
    1. scikit-learn, ``sklearn.mixture.GaussianMixture``
       (https://scikit-learn.org/stable/modules/generated/sklearn.mixture.GaussianMixture.html).
    2. C. M. Bishop, "Pattern Recognition and Machine Learning", Springer 2006, section 9.2.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
import warnings

import numpy as np
import pyro
import sklearn
import torch
from arguments import require_at_least_one
from sklearn.mixture import GaussianMixture
from threadpoolctl import threadpool_info, threadpool_limits
from timing import device_name

from gallery.models import gmm
from gallery.models.gmm import GMMParams
from inference.em import em_gmm

DTYPES = {"float32": torch.float32, "float64": torch.float64}
REG_COVAR = 1e-6  # scikit-learn's default, passed to both
INIT_ROWS = 20_000  # k-means++ for the initial parameters runs on this many rows (untimed)
# HBM bandwidth (bytes/s) and peak FP64 / FP32 arithmetic (flop/s) from NVIDIA's data sheets, by name
DEVICE_PEAKS = {
    "H200": (4.8e12, 67e12, 67e12),
    "H100 NVL": (3.9e12, 60e12, 60e12),
    "H100 PCIe": (2.0e12, 51e12, 51e12),
    "H100": (3.35e12, 67e12, 67e12),  # SXM
}


def make_mixture(num_components: int, obs_dim: int, seed: int) -> GMMParams:
    """A known float64 mixture: weights in [0.5, 1.5] normalised, means ~ N(0, 1.5^2 I) (the
    components overlap, so EM has work to do), covariances A A^T / D + 0.3 I with A standard
    normal."""
    gen = torch.Generator().manual_seed(seed)
    kw = dict(generator=gen, dtype=torch.float64)
    weights = torch.rand(num_components, **kw) + 0.5
    loc = 1.5 * torch.randn(num_components, obs_dim, **kw)
    factor = torch.randn(num_components, obs_dim, obs_dim, **kw) / math.sqrt(obs_dim)
    cov = factor @ factor.mT + 0.3 * torch.eye(obs_dim, dtype=torch.float64)
    return GMMParams(weights / weights.sum(), loc, scale_tril=torch.linalg.cholesky(cov))


def sample(params: GMMParams, num_data: int, seed: int) -> torch.Tensor:
    """(N, D) float64 draws from the mixture on the CPU, seeded."""
    gen = torch.Generator().manual_seed(seed)
    c = torch.multinomial(params.weights, num_data, replacement=True, generator=gen)  # (N,)
    eps = torch.randn(num_data, params.loc.shape[1], 1, generator=gen, dtype=torch.float64)
    return params.loc[c] + (params.scale_tril[c] @ eps).squeeze(-1)


def initial_params(data: torch.Tensor, num_components: int, seed: int) -> GMMParams:
    """k-means++ and Lloyd steps on the first ``INIT_ROWS`` rows (``gmm.init_params``), float64."""
    return gmm.init_params(data[:INIT_ROWS], num_components, generator=torch.Generator().manual_seed(seed))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def blas_threads() -> int | None:
    """The thread count of numpy's BLAS, as threadpoolctl sees it (scikit-learn's BLAS calls)."""
    counts = [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]
    return max(counts) if counts else None


def settings(args, device: torch.device) -> dict:
    """The settings every benchmark of this folder records."""
    return {
        "device": str(device),
        "device_name": device_name(device),
        "dtype": args.dtype,
        "seed": args.seed,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "numpy": np.__version__,
        "sklearn": sklearn.__version__,
        "python": platform.python_version(),
    }


def resolve_device(name: str) -> torch.device:
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch sees no CUDA GPU; use --device cpu")
    return device


def device_peaks(device: torch.device, dtype: torch.dtype) -> tuple[float | None, float | None]:
    """(bandwidth bytes/s, peak flop/s) looked up by the GPU's name, else (None, None)."""
    if device.type != "cuda":
        return None, None
    name = torch.cuda.get_device_name(device)
    for key, (bandwidth, fp64, fp32) in DEVICE_PEAKS.items():
        if key in name:
            return bandwidth, fp64 if dtype == torch.float64 else fp32
    return None, None


def run_ours(data: torch.Tensor, init: GMMParams, iters: int, chunk_size: int | None = None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "did not converge": tol=0 asks for every iteration
        return em_gmm(
            data, init, max_iters=iters, tol=0.0, reg_covar=REG_COVAR, dtype=data.dtype, chunk_size=chunk_size
        )


def run_baseline(data: np.ndarray, init: GMMParams, args) -> GaussianMixture:
    reference = GaussianMixture(
        init.num_components,
        covariance_type="full",
        weights_init=init.weights.numpy(),
        means_init=init.loc.numpy(),
        precisions_init=torch.cholesky_inverse(init.scale_tril).numpy(),
        max_iter=args.iters,
        tol=0.0,
        reg_covar=REG_COVAR,
    )
    with warnings.catch_warnings(), threadpool_limits(limits=args.threads):
        warnings.simplefilter("ignore")  # ConvergenceWarning, for the same reason
        return reference.fit(data)


def main(args) -> dict:
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device, dtype = resolve_device(args.device), DTYPES[args.dtype]
    num_data = args.num_data or (50_000 if args.quick else 200_000)
    repeats = args.repeats or (3 if args.quick else 5)
    truth = make_mixture(args.components, args.obs_dim, args.seed)
    data_cpu = sample(truth, num_data, args.seed + 1)  # (N, D) float64
    init = initial_params(data_cpu, args.components, args.seed)
    data = data_cpu.to(device=device, dtype=dtype)
    init_dev = init.to(device=device, dtype=dtype)
    data_np = data_cpu.numpy()

    run_ours(data, init_dev, 1, args.chunk_size)  # warm-up: CUDA context, kernels, allocator
    times: dict[str, list[float]] = {"ours": [], "baseline": []}
    ours_result = reference = None
    for repeat in range(repeats):  # the two take turns, first one then the other
        for name in ("ours", "baseline") if repeat % 2 == 0 else ("baseline", "ours"):
            sync(device)
            start = time.perf_counter()
            if name == "ours":
                ours_result = run_ours(data, init_dev, args.iters, args.chunk_size)
            else:
                reference = run_baseline(data_np, init, args)
            sync(device)
            times[name].append(time.perf_counter() - start)

    ours_ll = float(ours_result.log_likelihoods[-1])
    baseline_ll = float(reference.score(data_np))
    if ours_result.num_iters != args.iters or reference.n_iter_ != args.iters:
        raise RuntimeError(f"iterations differ: ours {ours_result.num_iters}, baseline {reference.n_iter_}")
    median = {name: statistics.median(ts) for name, ts in times.items()}
    result = {
        "ours_s": median["ours"],
        "baseline_s": median["baseline"],
        "ratio": median["ours"] / median["baseline"],
        "speedup": median["baseline"] / median["ours"],
        "log_likelihood_ours": ours_ll,
        "log_likelihood_baseline": baseline_ll,
        "log_likelihood_diff": abs(ours_ll - baseline_ll),
        "loc_max_abs_diff": float(
            np.abs(ours_result.params.loc.double().cpu().numpy() - reference.means_).max()
        ),
        "log_likelihood_start": float(ours_result.log_likelihoods[0]),
        "log_likelihood_truth": float(gmm.log_likelihood(data_cpu, truth).mean()),
    }
    # the floor: one EM iteration reads the data once (E-step and M-step sums fused in one pass);
    # arithmetic: two (N, D) x (D, K*D)-sized matrix products per iteration, 2 flops a multiply-add
    bytes_per_iter = num_data * args.obs_dim * data.element_size()
    flops_per_iter = 4 * num_data * args.components * args.obs_dim**2
    bandwidth, peak_flops = device_peaks(device, dtype)
    bandwidth = args.bandwidth * 1e9 if args.bandwidth else bandwidth
    peak_flops = args.peak_flops * 1e12 if args.peak_flops else peak_flops
    roofline_s = args.iters * bytes_per_iter / bandwidth if bandwidth else None
    compute_s = args.iters * flops_per_iter / peak_flops if peak_flops else None
    result |= {
        "bytes_per_iter": bytes_per_iter,
        "bandwidth_bytes_per_s": bandwidth,
        "roofline_s": roofline_s,
        "ratio_to_roofline": median["ours"] / roofline_s if roofline_s else None,
        "flops_per_iter": flops_per_iter,
        "peak_flops_per_s": peak_flops,
        "compute_roofline_s": compute_s,
        "ratio_to_compute_roofline": median["ours"] / compute_s if compute_s else None,
        "repeats_s": times,
        "settings": settings(args, device)
        | {
            "baseline": "sklearn GaussianMixture(covariance_type='full'), CPU, float64",
            "baseline_threads": blas_threads() if args.threads is None else args.threads,
            "num_data": num_data,
            "obs_dim": args.obs_dim,
            "components": args.components,
            "iters": args.iters,
            "tol": 0.0,
            "reg_covar": REG_COVAR,
            "repeats": repeats,
            "chunk_size": args.chunk_size,
            "init": f"gmm.init_params (k-means++) on the first {min(INIT_ROWS, num_data)} rows",
        },
    }
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="float64", choices=list(DTYPES))
    parser.add_argument("--quick", action="store_true", help="N = 50,000, 3 repeats (default 200,000, 5)")
    parser.add_argument("--num-data", type=int, default=None)
    parser.add_argument("--obs-dim", type=int, default=16)
    parser.add_argument("--components", type=int, default=16)
    parser.add_argument("--iters", type=int, default=10, help="EM iterations, all run (tol=0)")
    parser.add_argument("--repeats", type=int, default=None, help="the median over repeats is reported")
    parser.add_argument(
        "--chunk-size", type=int, default=None, help="em_gmm's rows per pass (default: its own)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch and BLAS threads (default: theirs)")
    parser.add_argument(
        "--bandwidth", type=float, default=None, help="GB/s (default: looked up for H100/H200)"
    )
    parser.add_argument("--peak-flops", type=float, default=None, help="TFLOP/s (default: looked up)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name in ("num_data", "repeats", "chunk_size", "threads", "bandwidth", "peak_flops"):
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    require_at_least_one(parser, args, "obs_dim", "components", "iters")
    if args.num_data is not None and args.num_data < args.components:
        parser.error("--num-data must be at least --components")
    return args


if __name__ == "__main__":
    print(json.dumps(main(parse_args()), indent=2))
