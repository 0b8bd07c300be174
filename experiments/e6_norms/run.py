"""E6: normalization comparison (the Proxy Norm paper, Labatie et al. 2021) — SPEC §3 E6.

(a) Power plots (experiments/e6_norms/e6_power.py): a random 50-layer conv net (ReLU, 3×3,
circular padding, γ ~ N(1, 0.2²), β ~ N(0, 0.2²)) with BN, IN, LN, GN, LN+PN, GN+PN, LN+WS;
the channel-wise squared-mean share and the variability of instance statistics (SPEC §1.10)
by depth, of the conv output entering each norm and of the pre-activation, for 5 random nets
(seeds) per norm.
(b) Training every norm at a large and a small batch (configs/e6_norms.py) is not run here:
within this CPU's budget the ResNets reach 13–37% (issue 18), far from the paper's trained nets.
Its verdict says "not tested"; the comparison belongs to the speed trainer's norm study on a GPU
(issue 17). One run of it:

    normlab train --config configs/e6_norms.py:model=resnet20,width=1,epochs=30,norm=group+proxy \\
        --workdir runs/e6_gnpn

    python experiments/e6_norms/run.py            # part (a), ~10 min on a 2-core CPU
    python experiments/e6_norms/run.py --reuse    # reuse the cached power measures of the same code
    python experiments/e6_norms/run.py --report-only  # from results.json alone
    python experiments/e6_norms/run.py --tiny --out /tmp/e6     # 4 norms, depth 8, seconds
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from normlab.data.datasets import load_arrays
from normlab.reports import Report, Verdict, fmt, fmt_mean_ci, new_figure, verdict_table
from normlab.reports.experiment import (
    load_results,
    parse_experiment_args,
    report_results,
    sibling_module,
)
from normlab.reports.runs import code_digest

e6_power = sibling_module(__file__, "e6_power")  # the random nets' power measures

POWER = dict(depth=50, width=64, images=64, seeds=[0, 1, 2, 3, 4])
TINY_POWER = dict(depth=8, width=16, images=16, seeds=[0, 1])
TINY_NETS = ("BN", "IN", "LN", "LN+PN")  # --tiny: the norms its verdicts compare
# the comparisons the verdicts make, per random net (seed)
SQ_MEAN_PAIRS = (("LN", "LN+PN"), ("GN", "GN+PN"), ("LN", "BN"))
DOMINATES, REMOVED = 0.5, 0.5  # sq-mean share > 0.5 dominates; removed: below half of it
COLLAPSED = 0.2  # IN's inst-mean var share below 0.2 × BN's
NOT_TESTED_B = (
    "not run: within this CPU's budget the ResNets reached 13–37% (issue 18's outside read), far "
    "from the paper's trained nets; the comparison is the GPU norm study of the speed trainer "
    "(issue 17), one run: `normlab train --config configs/e6_norms.py:model=resnet20,width=1,"
    "epochs=30,norm=group+proxy,batch=8`")


def standardized_images(dataset: str, n: int) -> np.ndarray:
    """The first n training images, per-channel standardized over those images."""
    x, _ = load_arrays(dataset, "train")
    x = x[:n].astype(np.float64)
    return ((x - x.mean(axis=(0, 1, 2))) / x.std(axis=(0, 1, 2))).astype(np.float32)


# ------------------------------------------------------------------------------- (a) power


def power_results(args, dataset: str) -> dict[str, list[dict]]:
    """Part (a)'s measures of the random nets: {label: [measures of one net per seed]}."""
    size = TINY_POWER if args.tiny else POWER
    cache = args.runs / "power.json"  # --reuse reads it: the random nets take minutes on CPU
    # the measures depend on the training code and on e6_power.py, beside this script
    code = code_digest() + hashlib.sha256(Path(e6_power.__file__).read_bytes()).hexdigest()[:16]
    if args.reuse and cache.is_file():
        cached = json.loads(cache.read_text())
        if cached["size"] == size and (args.reuse_any_revision or cached.get("code") == code):
            return cached["by_seed"]
    x = standardized_images(dataset, size["images"])
    nets = TINY_NETS if args.tiny else list(e6_power.NETS)
    by_seed = e6_power.over_seeds(x, nets, depth=size["depth"], width=size["width"],
                                  seeds=size["seeds"])
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"size": size, "code": code, "by_seed": by_seed}))
    return by_seed


def summarize_power(by_seed: dict[str, list[dict]]) -> dict[str, Any]:
    """{"power": the mean over seeds of each curve, "last_layer": each seed's last-layer
    value}, both {label: {where: {measure: ...}}}."""
    mean = {label: jax.tree.map(lambda *v: np.mean(v, axis=0).tolist(), *runs,
                                is_leaf=lambda v: isinstance(v, list))
            for label, runs in by_seed.items()}
    last = {label: {where: {m: [run[where][m][-1] for run in runs] for m in e6_power.MEASURES}
                    for where in runs[0]}
            for label, runs in by_seed.items()}
    return {"power": mean, "last_layer": last}


def power_section(report: Report, results: dict[str, Any], size: dict, dataset: str,
                  draw: bool) -> None:
    depth, n = size["depth"], len(size["seeds"])
    report.heading("(a) Power plots: a random conv net at init")
    report.text(
        f"{depth} × (norm → ReLU → conv 3×3, {size['width']} channels), circular padding, no "
        f"biases, Kaiming kernels, γ ~ N(1, 0.2²), β ~ N(0, 0.2²); {size['images']} "
        f"{dataset} training images (per-channel standardized), BN in train mode (batch "
        f"statistics); {n} random nets (seeds {size['seeds']}) per norm. GN: groups of 8 "
        "channels. Shares are fractions of the power E[y²]: `sq-mean` = E_c[μ_c²]/E[y²] "
        "(channel-wise denormalization), `inst-mean var` = E_c[Var_n(μ_{n,c})]/E[y²] and "
        "`inst-std var` = E_c[Var_n(σ_{n,c})]/E[y²] (variability of instance statistics across "
        "examples)."
    )
    short = dict(zip(e6_power.MEASURES, ("sq-mean", "inst-mean var", "inst-std var"),
                     strict=True))
    last = results["last_layer"]
    report.text(f"**Last layer ({depth})**, mean ± half-width of the 95% Student-t CI over the "
                f"{n} random nets:")
    report.table(
        ["net"] + [f"{short[m]} of {where}" for where in ("x^l", "y^l")
                   for m in e6_power.MEASURES],
        [[label] + [fmt_mean_ci(last[label][where][m], ".3g")
                    for where in ("norm_input", "preact") for m in e6_power.MEASURES]
         for label in last])
    power = results["power"]
    layers = sorted({1, max(1, depth // 5), depth // 2, depth})
    for where, title in (("norm_input", "conv output x^l entering the norm"),
                         ("preact", "pre-activation y^l (the ReLU's input)")):
        report.text(f"**{title}**, mean over the {n} nets at layers "
                    f"{', '.join(map(str, layers))}:")
        report.table(["net"] + [f"{short[m]} @{layer}" for m in e6_power.MEASURES
                                for layer in layers],
                     [[label] + [fmt(r[where][m][layer - 1], ".3g")
                                 for m in e6_power.MEASURES for layer in layers]
                      for label, r in power.items()])
    report.plot("power_by_depth.png",
                "Power decomposition by depth in the random conv net, mean over the random nets "
                "(top: the conv output entering each norm; bottom: the pre-activation)",
                (lambda: _power_figure(power, depth)) if draw else None)


def _power_figure(power: dict[str, Any], depth: int):
    fig, axes = new_figure(3, 2)
    for row, where in enumerate(("norm_input", "preact")):
        for col, measure in enumerate(e6_power.MEASURES):
            ax = axes[3 * row + col]
            for label, r in power.items():
                ax.plot(range(1, depth + 1), r[where][measure], label=label,
                        linestyle="--" if "PN" in label else "-")
            ax.set_title(f"{measure} of {'x^l (norm input)' if row == 0 else 'y^l (pre-act)'}",
                         fontsize=9)
            ax.set_xlabel("layer")
            ax.set_yscale("log" if measure != "sq_mean_share" else "linear")
    axes[0].legend(fontsize=8)
    return fig


def _holds(per_seed: list[bool]) -> str:
    """reproduced in every random net, partly in some, not reproduced in none."""
    k = sum(per_seed)
    return ("reproduced" if k == len(per_seed) else "partly reproduced" if k
            else "not reproduced")


def verdicts(results: dict[str, Any]) -> list[Verdict]:
    """(a) from the last layer of each random net (a claim holds in a net or not; the verdict
    counts the nets); (b) is not tested."""
    last = results["last_layer"]
    sq = {k: r["norm_input"]["sq_mean_share"] for k, r in last.items()}
    inst = {k: r["norm_input"]["instance_mean_var_share"] for k, r in last.items()}
    n = len(next(iter(sq.values())))
    pairs = [(a, b) for a, b in SQ_MEAN_PAIRS if a in sq and b in sq]
    sq_holds = [all(sq[a][i] > DOMINATES and sq[b][i] < REMOVED * sq[a][i] for a, b in pairs)
                for i in range(n)]
    in_holds = [inst["IN"][i] < COLLAPSED * inst["BN"][i] for i in range(n)]
    return [
        Verdict("LN/GN: the channel-wise squared mean dominates deep; PN (and BN) remove it",
                "sq-mean share of x^l, last layer: "
                + ", ".join(f"{k} {fmt_mean_ci(v, '.3g')}" for k, v in sq.items())
                + f"; LN/GN > {DOMINATES} and PN/BN < {REMOVED}× it in {sum(sq_holds)} of {n} "
                "random nets", _holds(sq_holds), n=n),
        Verdict("IN: the instance means stop varying across examples",
                f"inst-mean var share of x^l, last layer: IN {fmt_mean_ci(inst['IN'], '.3g')}, "
                f"BN {fmt_mean_ci(inst['BN'], '.3g')}; IN < {COLLAPSED}× BN in "
                f"{sum(in_holds)} of {n} random nets", _holds(in_holds), n=n),
        Verdict("BN degrades at small batch; GN+PN / LN+PN match or beat BN", NOT_TESTED_B,
                "not tested"),
    ]


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Runs E6 part (a) (or, with --report-only, reads its results.json) and writes the report;
    returns the results."""
    args = parse_experiment_args(__doc__, __file__, argv)
    report = Report("E6: normalization comparison (Proxy Norm paper)", args.out,
                    command=args.command)
    if args.report_only:
        results = load_results(args.out)
    else:
        dataset = "digits" if args.tiny else "cifar10"
        results = {"dataset": dataset, "power_size": TINY_POWER if args.tiny else POWER,
                   **summarize_power(power_results(args, dataset))}
    write_report(report, results, draw=not args.report_only)
    return results


def write_report(report: Report, results: dict[str, Any], *, draw: bool) -> None:
    """The report from `results` alone (`draw`: False embeds the committed figure)."""
    dataset, size = results["dataset"], results["power_size"]
    report.facts["part (a)"] = f"random conv nets, depth {size['depth']}, {dataset}"
    report.facts["part (b)"] = "not run (see its verdict)"
    report.text(
        "**Claim** (SPEC §3 E6): (a) in a random deep conv net LN and GN show a channel-wise "
        "squared-mean share growing with depth, IN shows collapsed instance-statistics "
        "variability, and BN, LN+PN, GN+PN show neither; (b) BN degrades at small batch; GN+PN "
        "and LN+PN match or beat BN and beat GN, LN and IN."
    )
    power_section(report, results, size, dataset, draw)
    report.heading("Result")
    claims = verdicts(results)
    report.text(verdict_table(claims))
    report_results(report, results, claims)


if __name__ == "__main__":
    main()
