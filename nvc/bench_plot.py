"""`nvc bench --plot OUT.png`: the bench report as one chart (matplotlib, headless).

Top: bits/voxel per volume for every codec of the run (grouped bars, lower is better; NVC's
profiles in strong colours, the reference codecs in muted ones), with each volume's mean
over the corpus in the last group. Bottom: encode and decode speed per codec (median over the
volumes, whiskers from the slowest to the fastest volume, log scale, MB of raw voxels per
second), because speeds span three orders of magnitude between HTJ2K and the learned codecs.
Failed round trips are left out of the chart (the table names them).

Also runnable on a saved report: `python -m nvc.bench_plot bench.json bench.png`.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

#: Strong colours for NVC profiles, muted ones for the reference codecs (colour-blind safe
#: pairs from matplotlib's tab10 / tab20c).
NVC_COLOURS = ("#d62728", "#9467bd", "#8c564b", "#e377c2")
REFERENCE_COLOURS = ("#1f77b4", "#6baed6", "#2ca02c", "#98df8a", "#ff7f0e", "#ffbb78", "#7f7f7f", "#c7c7c7")


def _colours(columns: list[str]) -> dict[str, str]:
    nvc = [c for c in columns if c.startswith("nvc_")]
    ref = [c for c in columns if not c.startswith("nvc_")]
    out = {c: NVC_COLOURS[i % len(NVC_COLOURS)] for i, c in enumerate(nvc)}
    out.update({c: REFERENCE_COLOURS[i % len(REFERENCE_COLOURS)] for i, c in enumerate(ref)})
    return out


def _value(result: dict, key: str) -> float | None:
    return result.get(key) if result.get("verified") else None


def plot(report: dict, out: str | Path) -> Path:
    """Write the chart of `report` (the dict `run_benchmark` returns) to `out` (PNG); returns the path."""
    import matplotlib

    matplotlib.use("Agg")  # no display: the chart is a file
    import matplotlib.pyplot as plt

    columns: list[str] = report["columns"]
    volumes: list[dict] = report["volumes"]
    colours = _colours(columns)
    names = [v["name"] for v in volumes] + ["mean"]
    fig, (ax_bpv, ax_speed) = plt.subplots(
        2, 1, figsize=(11, 8.5), gridspec_kw={"height_ratios": [3, 2]}, layout="constrained"
    )

    width = 0.8 / max(1, len(columns))
    for i, col in enumerate(columns):
        values = [_value(v["results"][col], "bits_per_voxel") for v in volumes]
        values.append(report["mean_bits_per_voxel"].get(col))
        xs = [k + (i - (len(columns) - 1) / 2) * width for k in range(len(names))]
        kept = [(x, y) for x, y in zip(xs, values) if y is not None]
        if kept:
            ax_bpv.bar([x for x, _ in kept], [y for _, y in kept], width, label=col, color=colours[col],
                       edgecolor="black" if col.startswith("nvc_") else "none", linewidth=0.6)
    ax_bpv.set_xticks(range(len(names)), names, rotation=25, ha="right", fontsize=9)
    ax_bpv.set_ylabel("bits per voxel (lower is better)")
    ax_bpv.grid(axis="y", alpha=0.3)
    ax_bpv.set_axisbelow(True)
    ax_bpv.legend(ncol=min(len(columns), 8), fontsize=9, loc="upper left", frameon=False)
    ax_bpv.margins(y=0.12)
    title = "Lossless codecs on the same volumes, every round trip verified"
    if report.get("crop"):
        title += f" (centred {'x'.join(map(str, report['crop']))} crops)"
    ax_bpv.set_title(title)

    ys = list(range(len(columns)))
    for offset, key, label, hatch in ((-0.2, "encode_MBps", "encode", None), (0.2, "decode_MBps", "decode", "//")):
        med, lo, hi = [], [], []
        for col in columns:
            speeds = [s for v in volumes if (s := _value(v["results"][col], key))]
            med.append(statistics.median(speeds) if speeds else 0)
            lo.append(med[-1] - min(speeds) if speeds else 0)
            hi.append(max(speeds) - med[-1] if speeds else 0)
        ax_speed.barh([y + offset for y in ys], med, 0.38, xerr=[lo, hi], color=[colours[c] for c in columns],
                      hatch=hatch, edgecolor="black", linewidth=0.4, label=label, error_kw={"lw": 0.8, "capsize": 2})
        for y, m, h in zip(ys, med, hi):
            if m:
                ax_speed.text((m + h) * 1.08, y + offset, f"{m:.3g}", va="center", fontsize=8)
    ax_speed.set_xscale("log")
    ax_speed.set_yticks(ys, columns, fontsize=9)
    ax_speed.invert_yaxis()
    ax_speed.set_xlabel("MB of raw voxels per second (median over volumes; whiskers: slowest to fastest; log scale)")
    ax_speed.grid(axis="x", which="both", alpha=0.3)
    ax_speed.set_axisbelow(True)
    handles = [plt.Rectangle((0, 0), 1, 1, facecolor="white", edgecolor="black", hatch=h) for h in (None, "//")]
    ax_speed.legend(handles, ["encode", "decode (hatched)"], fontsize=9, loc="lower right")
    env = report.get("environment") or {}
    load = ", ".join(f"{x:.1f}" for x in env.get("load_average") or [])
    end = ", ".join(f"{x:.1f}" for x in env.get("load_average_end") or [])
    ax_speed.set_title(f"Speed on {env.get('cpu_count', '?')} CPUs (CUDA {env.get('cuda')}; load average at start "
                       f"{load or '?'}{', at the end ' + end if end else ''}; {env.get('date', '')})", fontsize=10)

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m nvc.bench_plot BENCH.json OUT.png", file=sys.stderr)
        return 2
    plot(json.loads(Path(argv[0]).read_text()), argv[1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
