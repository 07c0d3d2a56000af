"""Memory and time of layer CKA on the full MSD Hippocampus test split, all levels of the 3D U-Net.

Two networks (build_dynunet(3), default filters; seeds 0 and 1 — memory and time do not depend on the
weights) run on the 52 test volumes, centre padded/cropped to 40×56×40, in minibatches of 8 (the last of 4);
`layer_cka(..., layers="all", mode="flatten")` accumulates the unbiased minibatch HSICs, plus RSA on 4³-grid
pooled features. Prints the peak RSS (ru_maxrss) next to the bytes that all features would take if held at
once (Σ over levels and cases of numel × 4, for both networks), and the wall time.

    python benchmarks/cka_memory.py [--batch-size 8] [--spatial-size 40,56,40]
"""

from __future__ import annotations

import argparse
import resource
import time

from _common import DATA  # noqa: F401  (sets sys.path, silences warnings)


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--spatial-size", default="40,56,40")
    args = parser.parse_args()
    size = [int(v) for v in args.spatial_size.split(",")]

    import torch

    from medtransfer.analysis.compare import image_batches, layer_cka
    from medtransfer.analysis.features import FeatureRecorder, layer_names
    from medtransfer.data import open_manifest
    from medtransfer.networks import build_dynunet

    torch.set_num_threads(2)
    rss_start = rss_mib()
    manifest = open_manifest("msd_hippocampus", DATA / "msd_hippocampus")
    t0 = time.perf_counter()
    batches = image_batches(manifest, "test", spatial_size=size, batch_size=args.batch_size, divisor=8)
    t_load = time.perf_counter() - t0
    rss_loaded = rss_mib()
    n = sum(b["image"].shape[0] for b in batches)
    net_a = build_dynunet(3, init_seed=0).eval()
    net_b = build_dynunet(3, init_seed=1).eval()
    names = layer_names(net_a, "all")

    # feature sizes from one example (every case has the same size after pad/crop)
    with torch.no_grad(), FeatureRecorder(net_a, names) as recorder:
        net_a(batches[0]["image"][:1])
    per_case = {name: recorder.features[name].numel() * 4 for name in names}
    del recorder
    all_features_one_net = sum(per_case.values()) * n
    all_features = 2 * all_features_one_net

    t0 = time.perf_counter()
    rows = layer_cka(net_a, net_b, batches, layers="all", mode="flatten", with_rsa=True)
    t_cka = time.perf_counter() - t0
    rss_peak = rss_mib()

    print(f"MSD Hippocampus test split: {n} volumes, {len(batches)} minibatches of <= {args.batch_size}, "
          f"size {size}, build_dynunet(3) filters {list(net_a.filters)}, {torch.get_num_threads()} threads")
    print(f"{'layer':<15} {'part':<8} {'MiB/case':>9} {'CKA':>8} {'RSA':>8}")
    for row in rows:
        print(f"{row['layer']:<15} {row['part']:<8} {per_case[row['layer']] / 2**20:>9.2f} {row['cka']:>8.4f} "
              f"{row['rsa']:>8.4f}")
    print(f"all features held at once: {all_features / 2**20:,.0f} MiB (both networks; "
          f"{all_features_one_net / 2**20:,.0f} MiB per network)")
    print(f"peak RSS: {rss_peak:,.0f} MiB (after imports {rss_start:,.0f} MiB, after loading images "
          f"{rss_loaded:,.0f} MiB); peak RSS / all features = {rss_peak * 2**20 / all_features:.2f}")
    print(f"wall time: load {t_load:.1f} s, CKA+RSA {t_cka:.1f} s ({t_cka / n:.2f} s per volume, both networks)")


if __name__ == "__main__":
    main()
