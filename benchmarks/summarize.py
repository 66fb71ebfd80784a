"""Markdown tables of the measurements in README "Speed", from the files that hold them.

python benchmarks/summarize.py benchmarks/cpu            # resexp bench JSON files
python benchmarks/summarize.py --accuracy benchmarks/accuracy   # the fast-path runs
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def bench_tables(folder: Path) -> str:
    """One row per option measured (options-*.json), then resexp against the baseline."""
    lines = [
        "| ResNet-20, resexp's loop | images/s | ms/step (median) | eval images/s | load before |",
        "| --- | --- | --- | --- | --- |",
    ]
    for path in sorted(folder.glob("options-*.json")):
        r = json.loads(path.read_text())
        ours = r["resexp"]
        setup = (
            f"{ours['precision']}, {'channels_last' if ours['channels_last'] else 'NCHW'}, "
            f"compile={ours['compile']}, {r['machine']['threads']} threads"
        )
        lines.append(
            f"| {setup} | {ours['images_per_s']:.0f} | {ours['ms_per_step_median']:.0f} "
            f"| {ours['eval_images_per_s']:.0f} | {r['machine']['load_average_before'][0]:.2f} |"
        )
    parallel = [json.loads(p.read_text()) for p in sorted(folder.glob("parallel-*.json"))]
    if parallel:
        rates = [r["resexp"]["images_per_s"] for r in parallel]
        lines.append(
            f"| {len(parallel)} runs at once, 1 thread each | {sum(rates):.0f} in all "
            f"({' + '.join(f'{v:.0f}' for v in rates)}) | | | |"
        )
    lines += [
        "",
        "| model | resexp images/s | baseline images/s | ratio | data share (resexp) "
        "| eval images/s (resexp / baseline) | peak RSS MiB (resexp / baseline) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for path in sorted(folder.glob("resnet-*.json")) + sorted(folder.glob("plain-*.json")):
        r = json.loads(path.read_text())
        ours, base = r["resexp"], r["baseline"]
        lines.append(
            f"| {r['model']['arch']} ({ours['precision']}, "
            f"{'channels_last' if ours['channels_last'] else 'NCHW'}) "
            f"| {ours['images_per_s']:.0f} | {base['images_per_s']:.0f} | {r['speedup']:.2f}x "
            f"| {ours['data_share']:.1%} "
            f"| {ours['eval_images_per_s']:.0f} / {base['eval_images_per_s']:.0f} "
            f"| {ours['peak_rss_mib']:.0f} / {base['peak_rss_mib']:.0f} |"
        )
    return "\n".join(lines)


def accuracy_table(outputs: Path) -> str:
    """Test error at each evaluation of every fastpath-<precision> run, side by side."""
    runs = sorted(outputs.glob("fastpath-*/*/seed*/metrics.jsonl"))
    if not runs:
        raise SystemExit(f"no fastpath-* runs under {outputs}; run benchmarks/fastpath_accuracy.sh")
    columns = {}
    for path in runs:
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        label = f"{path.parts[-4].removeprefix('fastpath-')} {path.parts[-2]}"
        columns[label] = {r["iteration"]: r for r in rows}
    iterations = sorted({i for rows in columns.values() for i in rows})
    lines = [
        "| iteration | " + " | ".join(f"{label} train / test error %" for label in columns) + " |",
        "| --- |" + " --- |" * len(columns),
    ]
    for i in iterations:
        cells = []
        for rows in columns.values():
            r = rows.get(i)
            cells.append(f"{r['train_error']:.1f} / {r['test_error']:.1f}" if r else "")
        lines.append(f"| {i} | " + " | ".join(cells) + " |")
    speeds = []
    for label, rows in columns.items():
        rates = [r["images_per_second"] for r in rows.values() if r.get("images_per_second")]
        if rates:
            speeds.append(f"{label}: {sorted(rates)[len(rates) // 2]:.0f} images/s (median)")
    return "\n".join(lines) + "\n\n" + "; ".join(speeds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--accuracy", action="store_true", help="folder is an outputs folder")
    args = parser.parse_args()
    print(accuracy_table(args.folder) if args.accuracy else bench_tables(args.folder))


if __name__ == "__main__":
    main()
