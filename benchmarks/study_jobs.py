"""Wall clock of a whole study with its cells in 1, 2, ... worker processes (`tunelens run --jobs`).

    python benchmarks/study_jobs.py                       # the quick study, --jobs 1 and 2
    python benchmarks/study_jobs.py --study examples/code-compliance.yaml --jobs 1 2

Each row runs the study from scratch into its own temporary folder (the zoo ladder is built once
beforehand and shared, so no row pays for it). The peer is `--jobs 1` in the same run; the floor
is that time divided by the number of workers (perfect scaling: a study cannot go faster than
its cells' work shared out evenly, and not faster than its longest cell). Run by hand on a quiet
machine; nothing asserts on it.

Measured here (2 cores, quiet, 2026-11-30), the quick study (22 cells of tiny models):

    jobs   wall s   speed-up vs --jobs 1   floor s (perfect scaling)   train s (summed)
       1     54.7                  1.00x                        54.7               26.9
       2     40.2                  1.36x                        27.4               35.5

Its cells take seconds, so what does not scale shows: each worker's imports (~10 s), the RAG
index, compare and report in the main process. On the demo study (minutes of training per cell)
two workers took 634 s of wall clock against 1,207 s for one process (1.90x; measured in separate
runs of `make demo` at 400 steps, not by this script: the demo takes ~30 minutes per row here).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def run_once(study_file: Path, out: Path, zoo_root: Path, jobs: int) -> tuple[float, dict]:
    from tunelens.config import load_study
    from tunelens.study import StudyRunner

    runner = StudyRunner(load_study(study_file), out, zoo_root=zoo_root, origin=str(study_file),
                         jobs=jobs, threads=1)
    start = time.perf_counter()
    statuses = runner.run()
    wall = time.perf_counter() - start
    failed = [s.run for s in statuses if s.status != "ok"]
    if failed:
        raise SystemExit(f"cells failed with --jobs {jobs}: {', '.join(failed)}")
    return wall, runner.timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", type=Path, default=Path("examples/quick.yaml"))
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--zoo", type=Path, default=None, help="zoo cache (default: a temp dir)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from rich.console import Console

    from tunelens.runtime import quiet_libraries

    quiet_libraries()
    from rich.table import Table

    from tunelens.config import load_study
    from tunelens.matrix import expand_matrix, resolve_model_path

    with tempfile.TemporaryDirectory(prefix="tl-jobs-") as tmp:
        zoo_root = args.zoo or Path(tmp) / "zoo"
        study = load_study(args.study)
        for spec in study.models:  # built once, outside every timed row
            resolve_model_path(spec, zoo_root)
        cells = len(expand_matrix(study, str(args.study)))
        rows = {jobs: run_once(args.study, Path(tmp) / f"jobs{jobs}", zoo_root, jobs)
                for jobs in sorted(set([1, *args.jobs]))}
    peer = rows[1][0]
    table = Table(title=f"{args.study.name}: {cells} cells, wall clock per --jobs "
                        f"({os.cpu_count()} cores, 1 torch thread per worker)")
    for col in ("jobs", "wall s", "speed-up vs --jobs 1", "floor s (perfect scaling)",
                "train s (summed)"):
        table.add_column(col, justify="right")
    for jobs, (wall, timings) in rows.items():
        table.add_row(str(jobs), f"{wall:.1f}", f"{peer / wall:.2f}x", f"{peer / jobs:.1f}",
                      f"{timings.get('train', 0.0):.1f}")
    Console().print(table)


if __name__ == "__main__":
    main()
