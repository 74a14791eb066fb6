"""The paper's comparison: every method on plain and encrypted images, over one or more seeds.

Writes, in the output folder: one run directory per (method, setting, seed), ``results.csv`` (one row a run),
``summary.csv`` and ``results.md`` (mean, standard deviation and 95% interval per cell) and ``results.png``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from scipy import stats

from ..common.atomic import begin_result_set, fresh_folder, output_lock, save_figure, write_text
from ..common.errors import (
    ConfigError,
    IncompleteResultsError,
    check_options,
    check_output_path,
    each,
    integer,
    one_of,
    option,
    optional,
    path,
    read_json,
    read_table,
    refuse_other_settings,
)
from ..common.shipped import DEMO_PASSPHRASE
from ..data.datasets import load_dataset
from ..models.backbones import create_backbone, describe, weights_hash
from ..models.methods import ALL_METHODS, METHODS
from ..training.run import (
    MAX_SEED,
    SETTING_NAMES,
    TrainConfig,
    check_splits,
    finished_run,
    resolve_key,
    result_settings,
)
from .cluster import check_engine, cluster_address, connected
from .parallel import jobs_allowed, train_runs

SETTINGS = ("plain", "encrypted")


def run_name(method: str, setting: str, seed: int, first_seed: int = 0) -> str:
    """The folder of one run inside a comparison: `melo-encrypted` for the first seed, then `-seed1`, ..."""
    return f"{method}-{setting}" + (f"-seed{seed}" if seed != first_seed else "")


@dataclass
class CompareConfig:
    """What `compare` runs beyond the TrainConfig: methods x settings x seeds, where, and how many at a time (on
    this machine, or on the Ray cluster at `address` with `threads` torch threads a run)."""

    methods: tuple = option(METHODS, each(one_of(*ALL_METHODS)))
    settings: tuple = option(SETTINGS, each(one_of(*SETTINGS)))
    seeds: int = option(1, integer(1))
    out: str | None = option(None, optional(path()))
    overwrite: bool = False
    jobs: int = option(1, jobs_allowed())
    address: str | None = option(None, optional(cluster_address()))
    threads: int | None = option(None, optional(integer(1)))

    def __post_init__(self):
        self.methods, self.settings = tuple(self.methods), tuple(self.settings)
        check_options(self)
        check_engine(self.jobs, self.address, self.threads)

    def check_base(self, base: TrainConfig) -> None:
        """Refuse what the grid and its runs' settings cannot do together: seeds past the largest a run accepts,
        a --patch-lr (the proposed method's) in a grid without the proposed method."""
        if base.seed + self.seeds - 1 > MAX_SEED:
            raise ConfigError(f"--seed + --seeds must stay below {MAX_SEED + 1}, got {base.seed} + {self.seeds}")
        if base.patch_lr is not None and "proposed" not in self.methods:
            raise ConfigError(
                f"--patch-lr sets the proposed method's patch-embedding learning rate; "
                f"--methods {','.join(self.methods)} has no proposed"
            )


def compare(
    base: TrainConfig,
    methods=METHODS,
    settings=SETTINGS,
    seeds: int = 1,
    out: str | Path | None = None,
    overwrite: bool = False,
    log=print,
    jobs: int = 1,
    address: str | None = None,
    threads: int | None = None,
) -> pd.DataFrame:
    """Train every (method, setting, seed) on one dataset, `jobs` runs at a time, or each as a task on the Ray
    cluster at `address` (`threads` torch threads a run); one row per run (written to `out`). Every option is
    checked, and the cluster joined, before the data is loaded.

    `out` is locked while it runs. An unfinished comparison there (no meta.json) resumes: its complete runs are
    kept if they were made with the same settings, and refused naming the setting otherwise. With `overwrite`, the
    new comparison is written beside the old one and swapped in when complete."""
    grid = CompareConfig(methods, settings, seeds, str(out) if out else None, overwrite, jobs, address, threads)
    grid.check_base(base)
    if not grid.out:
        with connected(grid.address, grid.threads) as cluster:
            return _compare(base, grid, None, log, cluster)
    out = check_output_path(grid.out, "--out", folder=True)
    with output_lock(out):
        if out.exists() and not overwrite and (out / "meta.json").exists():
            raise ConfigError(f"{out} already holds a comparison; pass --overwrite to replace it")
        with connected(grid.address, grid.threads) as cluster, fresh_folder(out, overwrite) as folder:
            return _compare(base, grid, folder, log, cluster)


def _compare(base: TrainConfig, grid: CompareConfig, out: Path | None, log, cluster) -> pd.DataFrame:
    """The grid's runs (those already complete in `out` read back), then its tables, meta.json last."""
    backbone = create_backbone(
        base.backbone, pretrained=base.pretrained, weights=base.weights, image_size=base.image_size
    )
    geometry = describe(backbone, base.backbone)
    passphrase = base.passphrase if base.passphrase or base.key else DEMO_PASSPHRASE
    configs = {}
    for seed in range(base.seed, base.seed + grid.seeds):
        for setting in grid.settings:
            for method in grid.methods:
                name = run_name(method, setting, seed, base.seed)
                # --patch-lr is the proposed method's: full fine-tuning keeps its one, lower, learning rate
                configs[name] = replace(
                    base,
                    method=method,
                    seed=seed,
                    lr=base.lr,
                    test_every_epoch=False,
                    patch_lr=base.patch_lr if method == "proposed" else None,
                    key=base.key if setting == "encrypted" else None,
                    passphrase=passphrase if setting == "encrypted" and not base.key else None,
                    out=str(out / name) if out else None,
                    overwrite=True,
                    progress=base.progress and grid.jobs == 1,
                )
    # the key file is read (a key that does not fit is refused) and the passphrase's key made before the data
    key = resolve_key(base.key, None if base.key else passphrase, geometry.patch_size, geometry.channels)
    backbone_hash = weights_hash(backbone)
    plan = comparison_settings(base, grid, key.fingerprint if "encrypted" in grid.settings else None, backbone_hash)
    done = _complete_runs(out, plan, configs, key.fingerprint, backbone_hash) if out else {}
    splits = load_dataset(base.dataset, geometry.image_size, geometry.channels, base.limit)
    check_splits(splits, base.limit)
    names = list(configs)
    rows: list[dict | None] = [done.get(name) for name in names]
    if out:
        if done:
            log(f"resuming: {len(done)} of {len(names)} runs already complete in {out}")
        begin_result_set(out, plan)
    todo = [i for i, row in enumerate(rows) if row is None]

    def finished(index: int, result: dict) -> None:
        row = {**run_row(result), "run": names[todo[index]]}
        rows[todo[index]] = row
        log(
            f"{row['run']}: test {row['test_acc']:.2f}%  val {row['val_acc']:.2f}%  "
            f"{row['trainable']:,} trainable  {row['seconds']:.0f} s"
        )

    start = time.perf_counter()
    train_runs(((configs[names[i]], splits, backbone) for i in todo), grid.jobs, finished, cluster)
    table = pd.DataFrame(rows)
    full = table.loc[table.method == "full", "trainable"]
    table["percent_of_full"] = 100 * table.trainable / (full.iloc[0] if len(full) else np.nan)
    if out:
        write_results(
            table,
            out,
            {
                "backbone": base.backbone,
                "dataset": splits.name,
                "seeds": grid.seeds,
                "epochs": base.epochs,
                "jobs": grid.jobs,
                "address": grid.address,
                "seconds_total": time.perf_counter() - start,
                "settings": plan,
            },
        )
    return table


def comparison_settings(
    base: TrainConfig, grid: CompareConfig, key_fingerprint: str | None, backbone_hash: str
) -> dict:
    """Every setting that changes a comparison's numbers: the runs' (`result_settings`, the method aside) and the
    grid's methods, settings and seeds. Saved as OUT/config.json; a resume must match it."""
    runs = {k: v for k, v in result_settings(base, key_fingerprint, backbone_hash).items() if k != "method"}
    return {**runs, "methods": list(grid.methods), "settings": list(grid.settings), "seeds": grid.seeds}


def _complete_runs(
    out: Path, plan: dict, configs: dict[str, TrainConfig], fingerprint: str, backbone_hash: str
) -> dict[str, dict]:
    """The rows (result.json) of the runs already complete in `out`; ConfigError naming a setting that differs."""
    if (out / "config.json").exists():
        refuse_other_settings(read_json(out / "config.json"), plan, f"the comparison in {out}", SETTING_NAMES)
    done = {}
    for name, config in configs.items():
        key = fingerprint if config.key or config.passphrase else "plain"
        if finished_run(out / name, result_settings(config, key, backbone_hash)):
            done[name] = {**run_row(read_json(out / name / "result.json")), "run": name}
    return done


def run_row(result: dict) -> dict:
    """A run's result as a table row: without the model and metrics, and with where it ran (`ran_on`) as the
    columns engine and node (threads is one already)."""
    ran_on = result.get("ran_on") if isinstance(result.get("ran_on"), dict) else {}
    row = {k: v for k, v in result.items() if k not in ("model", "metrics", "ran_on")}
    return {**row, "engine": ran_on.get("engine"), "node": ran_on.get("node")}


def summarise(table: pd.DataFrame) -> pd.DataFrame:
    """Per (method, setting): mean, standard deviation and 95% t-interval of test accuracy over seeds."""

    def cell(group: pd.DataFrame) -> pd.Series:
        acc = group.test_acc.to_numpy()
        n = len(acc)
        sd = acc.std(ddof=1) if n > 1 else float("nan")
        half = stats.t.ppf(0.975, n - 1) * sd / np.sqrt(n) if n > 1 else float("nan")
        return pd.Series(
            {
                "test_acc": acc.mean(),
                "std": sd,
                "ci95": half,
                "seeds": n,
                "val_acc": group.val_acc.mean(),
                "trainable": int(group.trainable.iloc[0]),
                "percent_of_full": group.percent_of_full.iloc[0],
                "seconds": group.seconds.mean(),
                "adapter_bytes": group.get("adapter_bytes", pd.Series([np.nan])).iloc[0],
            }
        )

    order = {**{m: i for i, m in enumerate(METHODS)}, **{s: i for i, s in enumerate(SETTINGS)}}
    summary = table.groupby(["method", "setting"], sort=False).apply(cell, include_groups=False).reset_index()
    summary["trainable"] = summary.trainable.astype(int)
    return summary.sort_values(["method", "setting"], key=lambda c: c.map(order)).reset_index(drop=True)


# The differences the paper's claims rest on: (label, (method, setting) minus (method, setting)).
CONTRASTS = (
    ("MeLo: plain - encrypted", ("melo", "plain"), ("melo", "encrypted")),
    ("encrypted: proposed - MeLo", ("proposed", "encrypted"), ("melo", "encrypted")),
    ("encrypted: proposed - full", ("proposed", "encrypted"), ("full", "encrypted")),
    ("encrypted: full - MeLo", ("full", "encrypted"), ("melo", "encrypted")),
)


def paired_interval(diff: np.ndarray) -> tuple[float, float]:
    """95% t-interval half-width and paired t-test p-value of seed-paired differences.

    Both are nan with fewer than 2 seeds; p is also nan when every seed gives the same difference.
    """
    n = len(diff)
    if n < 2:
        return float("nan"), float("nan")
    sd = diff.std(ddof=1)
    half = float(stats.t.ppf(0.975, n - 1) * sd / np.sqrt(n))
    return half, float(stats.ttest_1samp(diff, 0).pvalue) if sd > 0 else float("nan")


def paired_differences(table: pd.DataFrame, alpha: float = 0.05) -> pd.DataFrame:
    """Seed-paired differences of test accuracy for CONTRASTS, with a paired t-test and a 95% interval.

    A difference is called supported only when the interval excludes zero (p < alpha), which needs >= 2 seeds.
    """
    by_run = table.set_index(["method", "setting", "seed"]).test_acc.sort_index()
    rows = []
    for label, first, second in CONTRASTS:
        try:
            a, b = by_run.loc[first], by_run.loc[second]
        except KeyError:
            continue
        seeds = sorted(set(a.index) & set(b.index))
        diff = (a.loc[seeds] - b.loc[seeds]).to_numpy()
        half, p = paired_interval(diff)
        rows.append(
            {
                "contrast": label,
                "mean_diff": diff.mean(),
                "ci95": half,
                "p_value": p,
                "seeds": len(diff),
                "supported": bool(p < alpha),
            }
        )
    return pd.DataFrame(rows)


def differences_markdown(diffs: pd.DataFrame) -> str:
    """Paired differences as a Markdown table."""
    if diffs.empty:
        return ""
    lines = [
        "",
        "Seed-paired differences of test accuracy (points); a difference is called a difference only "
        "when its 95% interval excludes zero (paired t-test p < 0.05).",
        "",
        "| contrast | mean difference | 95% interval | p | seeds | a difference? |",
        "|---|---|---|---|---|---|",
    ]
    for r in diffs.itertuples():
        interval = f"[{r.mean_diff - r.ci95:+.2f}, {r.mean_diff + r.ci95:+.2f}]" if r.ci95 == r.ci95 else "-"
        p = f"{r.p_value:.3f}" if r.p_value == r.p_value else "-"
        verdict = "yes" if r.supported else ("no" if r.seeds >= 2 else "needs >= 2 seeds")
        lines.append(f"| {r.contrast} | {r.mean_diff:+.2f} | {interval} | {p} | {r.seeds} | {verdict} |")
    return "\n".join(lines) + "\n"


def markdown(summary: pd.DataFrame, meta: dict) -> str:
    """The summary as a Markdown table: one row per method, one accuracy column per setting."""
    many = summary.seeds.max() > 1
    settings = [s for s in SETTINGS if s in set(summary.setting)]
    patch_lr = (meta.get("settings") or {}).get("patch_lr")
    lines = [
        f"Backbone `{meta['backbone']}`, dataset `{meta['dataset']}`, {meta['epochs']} epochs, "
        + (f"proposed's patch embedding at learning rate {patch_lr:g}, " if patch_lr is not None else "")
        + f"{int(summary.seeds.max())} seed(s); test accuracy in %"
        + (", mean ± sd [95% interval]" if many else "")
        + "; seconds of training per run.",
        "",
        "| method | trainable | % of full | " + " | ".join(settings) + " | seconds | adapter |",
        "|---|---|---|" + "---|" * len(settings) + "---|---|",
    ]
    by_cell = summary.set_index(["method", "setting"])
    for method in [m for m in METHODS if m in set(summary.method)]:
        cells = by_cell.loc[method]
        first = cells.iloc[0]
        accs = []
        for setting in settings:
            if setting not in cells.index:
                accs.append("-")
                continue
            r = cells.loc[setting]
            accs.append(
                f"{r.test_acc:.2f}"
                + (f" ± {r['std']:.2f} [{r.test_acc - r.ci95:.1f}, {r.test_acc + r.ci95:.1f}]" if many else "")
            )
        size = f"{first.adapter_bytes / 1024:.0f} KiB" if first.adapter_bytes == first.adapter_bytes else "-"
        lines.append(
            f"| {method} | {int(first.trainable):,} | {first.percent_of_full:.2f} | "
            + " | ".join(accs)
            + f" | {cells.seconds.mean():.0f} | {size} |"
        )
    return "\n".join(lines) + "\n"


def chart(summary: pd.DataFrame, meta: dict, path: Path) -> None:
    """Grouped bars: test accuracy per method, plain vs encrypted, with 95% intervals when seeds > 1."""
    methods = [m for m in METHODS if m in set(summary.method)]
    settings = [s for s in SETTINGS if s in set(summary.setting)]
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    width = 0.8 / len(settings)
    for i, setting in enumerate(settings):
        part = summary.set_index(["method", "setting"])
        values = [part.test_acc.get((m, setting), np.nan) for m in methods]
        errors = [part.ci95.get((m, setting), np.nan) for m in methods]
        bars = ax.bar(
            np.arange(len(methods)) + (i - (len(settings) - 1) / 2) * width,
            values,
            width,
            yerr=None if np.isnan(errors).all() else errors,
            capsize=3,
            label=setting,
        )
        ax.bar_label(bars, fmt="%.1f", fontsize=8)
    ax.set_xticks(np.arange(len(methods)), methods)
    ax.set_xlabel("fine-tuning method")
    ax.set_ylabel("test accuracy (%)")
    low = np.nanmin(summary.test_acc)
    ax.set_ylim(max(0, low - 15), 100)
    ax.set_title(f"{meta['backbone']} on {meta['dataset']}: plain vs encrypted images")
    ax.legend(loc="lower right")
    fig.tight_layout()
    save_figure(fig, path)


def write_results(table: pd.DataFrame, out: Path, meta: dict) -> None:
    """results.csv, summary.csv, differences.csv, results.md, results.png, then meta.json in `out`, each
    atomically: meta.json is removed first and written last, so that the tables count only as a whole set."""
    out.mkdir(parents=True, exist_ok=True)
    begin_result_set(out)
    summary = summarise(table)
    write_text(out / "results.csv", table.to_csv(index=False))
    write_text(out / "summary.csv", summary.to_csv(index=False))
    diffs = paired_differences(table)
    write_text(out / "differences.csv", diffs.to_csv(index=False))
    write_text(out / "results.md", markdown(summary, meta) + differences_markdown(diffs))
    chart(summary, meta, out / "results.png")
    write_text(out / "meta.json", json.dumps(meta, indent=1, default=str))


def collect_runs(run_dirs) -> pd.DataFrame:
    """One row per finished run directory (from its result.json): rebuilds a grid that ran in pieces."""
    rows = []
    for run in map(Path, run_dirs):
        rows.append({**run_row(read_json(run / "result.json")), "run": run.name})
    table = pd.DataFrame(rows)
    full = table.loc[table.method == "full", "trainable"]
    table["percent_of_full"] = 100 * table.trainable / (full.iloc[0] if len(full) else np.nan)
    return table


RESULT_COLUMNS = ["run", "method", "setting", "seed", "test_acc", "val_acc", "trainable"]
SUMMARY_COLUMNS = ["method", "setting", "test_acc", "std", "ci95", "seeds", "trainable"]


def load_results(folder: str | Path) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """(runs, summary, meta) of a complete comparison folder written by `compare`; IncompleteResultsError (an
    EncvitError) naming the folder and what is missing when it is unfinished or a table is damaged."""
    folder = Path(folder)
    if not (folder / "results.csv").exists() and not (folder / "meta.json").exists():
        raise ConfigError(f"{folder} holds no comparison results (results.csv)")
    if not (folder / "meta.json").exists():
        raise IncompleteResultsError(
            f"{folder} holds an unfinished comparison (no meta.json, which is written "
            f"last): run the same `encvit compare --out {folder}` to complete it"
        )
    meta = read_json(folder / "meta.json", IncompleteResultsError)
    runs, summary = (read_table(folder / name, IncompleteResultsError) for name in ("results.csv", "summary.csv"))
    for name, table, columns in (("results.csv", runs, RESULT_COLUMNS), ("summary.csv", summary, SUMMARY_COLUMNS)):
        missing = [c for c in columns if c not in table.columns]
        if missing or table.empty:
            raise IncompleteResultsError(
                f"{folder / name} is damaged: " + (f"it lacks {', '.join(missing)}" if missing else "it has no rows")
            )
    return runs, summary, meta
