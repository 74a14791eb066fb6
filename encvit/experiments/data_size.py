"""When does the proposed method help? Gaps on encrypted images as a function of training-set size and domain.

For each dataset, training-set size and seed, three runs on encrypted images: MeLo, proposed and full
fine-tuning (and proposed with each extra patch-embedding learning rate). The gaps proposed - MeLo and
full - MeLo are paired by seed and summarised with a 95% interval. Any dataset `load_dataset` knows can be
studied, the colour ones (``cfashion5k``, ``cmnist5k``) included.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

from ..cipher.key import Key
from ..common.atomic import begin_result_set, fresh_folder, output_lock, save_figure, write_text
from ..common.errors import (
    ConfigError,
    IncompleteResultsError,
    check_options,
    check_output_path,
    each,
    integer,
    number,
    option,
    optional,
    path,
    read_json,
    read_table,
    refuse_other_settings,
)
from ..common.shipped import DEMO_PASSPHRASE
from ..data.datasets import Splits, load_dataset, stratified_subset
from ..models.backbones import create_backbone, describe, weights_hash
from ..training.run import MAX_SEED, SETTING_NAMES, TrainConfig, check_splits, dataset_name, result_settings
from .cluster import check_engine, cluster_address, connected
from .compare import paired_interval
from .parallel import jobs_allowed, train_runs


def arm_name(method: str, patch_lr: float | None) -> str:
    """The label of one arm of the study: a method, with its patch learning rate when set."""
    return method if patch_lr is None else f"{method} (patch lr {patch_lr:g})"


RUN_KEY = ["dataset", "size", "seed", "arm"]


@dataclass
class StudyConfig:
    """What the data-size study runs beyond the TrainConfig: datasets x sizes x seeds x arms, where, and how
    many runs at a time (on this machine, or on the Ray cluster at `address` with `threads` torch threads a run)."""

    datasets: tuple = option(("fashion5k", "mnist5k"), each(dataset_name()))
    sizes: tuple = option((500, 1000, 2000, 3600), each(integer(1)))
    seeds: int = option(3, integer(1))
    patch_lrs: tuple = option((), each(number(0, low_open=True), empty=True))
    out: str | None = option(None, optional(path()))
    jobs: int = option(1, jobs_allowed())
    address: str | None = option(None, optional(cluster_address()))
    threads: int | None = option(None, optional(integer(1)))

    def __post_init__(self):
        self.datasets, self.sizes, self.patch_lrs = tuple(self.datasets), tuple(self.sizes), tuple(self.patch_lrs)
        check_options(self)
        check_engine(self.jobs, self.address, self.threads)


def data_size_study(
    base: TrainConfig,
    datasets=("fashion5k", "mnist5k"),
    sizes=(500, 1000, 2000, 3600),
    seeds: int = 3,
    patch_lrs=(),
    out: str | Path | None = None,
    log=print,
    jobs: int = 1,
    address: str | None = None,
    threads: int | None = None,
) -> pd.DataFrame:
    """Train MeLo, proposed (with each patch lr) and full on encrypted subsets, `jobs` runs at a time, or each as a
    task on the Ray cluster at `address` (`threads` torch threads a run); one row per run.

    With `out` (locked while it runs), study.csv is rewritten after every run, and runs already in it are skipped:
    an interrupted study resumes where it stopped, if every setting is the same (saved in config.json).
    `base.overwrite` starts afresh, beside the old study, which the new one replaces when complete.
    """
    plan = StudyConfig(datasets, sizes, seeds, patch_lrs, str(out) if out else None, jobs, address, threads)
    if base.seed + seeds - 1 > MAX_SEED:
        raise ConfigError(f"--seed + --seeds must stay below {MAX_SEED + 1}, got {base.seed} + {seeds}")
    out = check_output_path(out, "--out", folder=True) if out else None
    if not out:
        with connected(plan.address, plan.threads) as cluster:
            return _data_size_study(base, plan, None, log, cluster)
    with (
        output_lock(out),
        connected(plan.address, plan.threads) as cluster,
        fresh_folder(out, base.overwrite) as folder,
    ):
        return _data_size_study(base, plan, folder, log, cluster)


def study_settings(base: TrainConfig, plan: StudyConfig, key_fingerprint: str, backbone_hash: str) -> dict:
    """Every setting that changes a data-size study's numbers: the runs' (`result_settings`, less what each run
    sets itself) and the study's datasets, sizes, seeds and patch lrs. Saved as OUT/config.json."""
    per_run = ("dataset", "method", "patch_lr", "per_image_keys")
    runs = {k: v for k, v in result_settings(base, key_fingerprint, backbone_hash).items() if k not in per_run}
    return {
        **runs,
        "datasets": list(plan.datasets),
        "sizes": list(plan.sizes),
        "seeds": plan.seeds,
        "patch_lrs": list(plan.patch_lrs),
    }


def _data_size_study(base: TrainConfig, plan: StudyConfig, out: Path | None, log, cluster) -> pd.DataFrame:
    backbone = create_backbone(base.backbone, pretrained=base.pretrained, weights=base.weights)
    geometry = describe(backbone, base.backbone)
    passphrase = base.passphrase or DEMO_PASSPHRASE
    settings = study_settings(
        base,
        plan,
        Key.generate(geometry.patch_size, geometry.channels, passphrase=passphrase).fingerprint,
        weights_hash(backbone),
    )
    rows = _finished_runs(out, settings, base) if out else []
    arms = [("melo", None), ("proposed", None), *[("proposed", lr) for lr in plan.patch_lrs], ("full", None)]
    done = {tuple(r[k] for k in RUN_KEY) for r in rows}
    loaded = {dataset: load_dataset(dataset, geometry.image_size, geometry.channels) for dataset in plan.datasets}
    for dataset, full_splits in loaded.items():  # refuse before any training, not halfway through
        too_big = [size for size in plan.sizes if size > len(full_splits.train)]
        if too_big:
            raise ConfigError(f"{dataset} has {len(full_splits.train)} training images, fewer than {too_big[0]}")
    todo = []  # (the run's row without results, its config, its splits) in the order a sequential study runs them
    for dataset, full_splits in loaded.items():
        val, test = (stratified_subset(s, base.limit) if base.limit else s for s in (full_splits.val, full_splits.test))
        for size in plan.sizes:
            splits = Splits(dataset, stratified_subset(full_splits.train, size), val, test)
            check_splits(splits, base.limit)
            for seed in range(base.seed, base.seed + plan.seeds):
                for method, patch_lr in arms:
                    if (dataset, size, seed, arm_name(method, patch_lr)) in done:
                        continue
                    config = replace(
                        base,
                        dataset=dataset,
                        method=method,
                        seed=seed,
                        patch_lr=patch_lr,
                        test_every_epoch=False,
                        progress=base.progress and plan.jobs == 1,
                        passphrase=passphrase,
                        key=None,
                        out=None,
                        limit=None,
                    )
                    row = {
                        "dataset": dataset,
                        "size": size,
                        "seed": seed,
                        "arm": arm_name(method, patch_lr),
                        "method": method,
                        "patch_lr": patch_lr,
                    }
                    todo.append((row, config, splits))
    if out:
        if done:
            log(f"resuming: {len(done)} runs already in {out / 'study.csv'}")
        begin_result_set(out, settings)
    new_rows: dict[int, dict] = {}

    def table_so_far() -> pd.DataFrame:
        return pd.DataFrame(rows + [new_rows[i] for i in sorted(new_rows)])  # the sequential order, whatever jobs

    def finished(index: int, result: dict) -> None:
        ran_on = result.get("ran_on") or {}
        row = {
            **todo[index][0],
            "val_acc": result["val_acc"],
            "test_acc": result["test_acc"],
            "seconds": result["seconds"],
            "backbone": base.backbone,
            "epochs": base.epochs,
            "engine": ran_on.get("engine"),
            "node": ran_on.get("node"),
        }
        new_rows[index] = row
        log(f"{row['dataset']} n={row['size']} seed {row['seed']} {row['arm']}: test {row['test_acc']:.2f}%")
        if out:
            write_text(out / "study.csv", table_so_far().to_csv(index=False))

    start = time.perf_counter()
    train_runs(((config, splits, backbone) for _, config, splits in todo), plan.jobs, finished, cluster)
    table = table_so_far()
    if out:
        write_study(
            table,
            out,
            {
                "backbone": base.backbone,
                "epochs": base.epochs,
                "seeds": plan.seeds,
                "jobs": plan.jobs,
                "address": plan.address,
                "seconds_this_session": round(time.perf_counter() - start, 1),
                "training_seconds": round(float(table["seconds"].sum()), 1),
                "settings": settings,
            },
        )
    return table


def _finished_runs(out: Path, settings: dict, base: TrainConfig) -> list[dict]:
    """Rows of an earlier, possibly interrupted, study in `out`; ConfigError naming every setting (config.json,
    and each row's backbone and epochs) that differs from this one's."""
    if (out / "config.json").exists():
        refuse_other_settings(read_json(out / "config.json"), settings, f"the study in {out}", SETTING_NAMES)
    if not (out / "study.csv").exists():
        return []
    table = _read_runs(out / "study.csv")
    for column in ("backbone", "epochs"):
        others = sorted(set(table[column].tolist()) - {getattr(base, column)}, key=str)
        if others:
            refuse_other_settings({column: others[0]}, {column: getattr(base, column)}, f"the study in {out}")
    return table.astype(object).where(table.notna(), None).to_dict("records")


def merge_studies(folders, out: str | Path) -> pd.DataFrame:
    """Join the runs of several complete study folders (e.g. one per seed, run in parallel) into one study."""
    out = check_output_path(out, "--out", folder=True)
    with output_lock(out):
        return _merge_studies(folders, out)


def _merge_studies(folders, out: Path) -> pd.DataFrame:
    tables = [load_study_runs(f) for f in folders]
    table = pd.concat(tables, ignore_index=True)
    duplicated = table[table.duplicated(RUN_KEY, keep=False)]
    if len(duplicated):
        first = duplicated.iloc[0]
        raise ConfigError("the folders share a run: " + ", ".join(f"{k} {first[k]}" for k in RUN_KEY))
    backbones = sorted(set(table["backbone"]))
    if len(backbones) > 1:
        raise ConfigError(f"the folders mix backbones: {', '.join(backbones)}")
    seeds = int(table.groupby(["dataset", "size", "arm"]).seed.nunique().min())
    write_study(
        table,
        out,
        {
            "backbone": backbones[0],
            "epochs": int(table["epochs"].iloc[0]),
            "seeds": seeds,
            "merged_from": [str(f) for f in folders],
            "training_seconds": round(float(table["seconds"].sum()), 1),
        },
    )
    return table


STUDY_COLUMNS = [*RUN_KEY, "method", "patch_lr", "val_acc", "test_acc", "seconds", "backbone", "epochs"]


def load_study_runs(folder: str | Path) -> pd.DataFrame:
    """The runs (study.csv) of a complete study folder; a missing, unfinished (no meta.json), unreadable,
    truncated or foreign table is refused in one line."""
    folder = Path(folder)
    if not (folder / "study.csv").is_file():
        raise ConfigError(f"{folder} holds no study results (study.csv)")
    if not (folder / "meta.json").is_file():
        raise IncompleteResultsError(
            f"{folder} holds an unfinished study (study.csv without meta.json, which is "
            f"written last): run the same `encvit study data-size --out {folder}` to "
            "complete it"
        )
    return _read_runs(folder / "study.csv")


def _read_runs(path: Path) -> pd.DataFrame:
    """study.csv as a table, refused when unreadable, foreign, or truncated (a row without its results)."""
    table = read_table(path)
    missing = [c for c in STUDY_COLUMNS if c not in table.columns]
    if missing:
        raise ConfigError(f"{path} is not a study's run table: it lacks {', '.join(missing)}")
    required = [c for c in STUDY_COLUMNS if c != "patch_lr"]
    gaps_in = table[required].isna()
    if gaps_in.any(axis=None):
        row = int(gaps_in.any(axis=1).to_numpy().argmax())
        empty = [c for c in required if gaps_in[c].iloc[row]]
        raise ConfigError(
            f"{path} is truncated or damaged: its line {row + 2} has no {', '.join(empty)}; "
            "remove that line to run it again"
        )
    return table


CHOSEN_ON_VAL = "proposed (patch lr chosen on val)"


def with_validation_choice(table: pd.DataFrame) -> pd.DataFrame:
    """Add the arm that picks, per dataset, size and seed, the proposed run with the best validation accuracy.

    This is how a user would set --patch-lr: the test set plays no part in the choice. Needs at least
    two proposed arms (the default patch lr and one from --patch-lrs); otherwise the table is returned as is.
    """
    proposed = table[table.method == "proposed"]
    if proposed.arm.nunique() < 2:
        return table
    best = proposed.loc[proposed.groupby(["dataset", "size", "seed"]).val_acc.idxmax()].copy()
    best["arm"] = CHOSEN_ON_VAL
    return pd.concat([table, best], ignore_index=True)


BASELINE_NAMES = {"melo": "MeLo", "full": "full"}


def gaps(table: pd.DataFrame, baseline: str = "melo") -> pd.DataFrame:
    """Seed-paired gaps to a baseline arm (MeLo; or "full", to ask whether an arm matches full fine-tuning) on
    encrypted images per dataset, size and arm: mean, 95% interval, p-value."""
    wide = with_validation_choice(table).pivot_table(
        index=["dataset", "size", "seed"], columns="arm", values="test_acc"
    )
    if baseline not in wide.columns:
        raise ConfigError(f"the study has no arm {baseline!r} to compare with; it has: {', '.join(wide.columns)}")
    baseline_name = BASELINE_NAMES.get(baseline, baseline)
    rows = []
    for arm in [a for a in wide.columns if a != baseline]:
        for (dataset, size), part in wide.groupby(level=["dataset", "size"]):
            diff = (part[arm] - part[baseline]).dropna().to_numpy()
            half, p = paired_interval(diff)
            rows.append(
                {
                    "dataset": dataset,
                    "size": size,
                    "gap": f"{arm} - {baseline_name}",
                    "mean": diff.mean(),
                    "ci95": half,
                    "p_value": p,
                    "seeds": len(diff),
                    "supported": bool(p < 0.05),
                }
            )
    return pd.DataFrame(rows)


def gap_table(summary: pd.DataFrame) -> pd.DataFrame:
    """The gaps as a readable table: one row per dataset and size, one column per gap, cells "mean ± 95% half-width",
    with " *" where the seed-paired t-test gives p < 0.05."""
    cells = summary.assign(
        cell=[
            f"{m:+.2f} ± {h:.2f}{' *' if ok else ''}"
            for m, h, ok in zip(summary["mean"], summary.ci95.fillna(float("nan")), summary.supported, strict=False)
        ]
    )
    table = cells.pivot(index=["dataset", "size"], columns="gap", values="cell")
    return table[list(dict.fromkeys(summary.gap))]


def gaps_markdown(summary: pd.DataFrame) -> str:
    """gap_table as a Markdown table (the README and study.md show it)."""
    table = gap_table(summary)
    lines = ["| dataset | images | " + " | ".join(table.columns) + " |", "|---|---|" + "---|" * len(table.columns)]
    lines += [f"| {dataset} | {size:,} | " + " | ".join(row) + " |" for (dataset, size), row in table.iterrows()]
    return "\n".join(lines) + "\n"


def arm_accuracy(table: pd.DataFrame) -> pd.DataFrame:
    """Test accuracy per dataset, size and arm over the seeds (mean and standard deviation), one column per arm."""
    summary = with_validation_choice(table).groupby(["dataset", "size", "arm"]).test_acc.agg(["mean", "std"])
    cells = summary["mean"].map("{:.2f}".format) + " ± " + summary["std"].fillna(0).map("{:.2f}".format)
    return cells.unstack("arm")


def patch_lr_choices(table: pd.DataFrame) -> pd.DataFrame:
    """How often validation chose each patch learning rate, per dataset and size (None: the method's lr)."""
    chosen = with_validation_choice(table)
    chosen = chosen[chosen.arm == CHOSEN_ON_VAL]
    label = chosen.patch_lr.map(lambda lr: "same as lr" if pd.isna(lr) or lr is None else f"{lr:g}")
    return chosen.assign(patch_lr=label).groupby(["dataset", "size"]).patch_lr.value_counts().unstack(fill_value=0)


def plot_gaps(summary: pd.DataFrame, path: Path, title: str) -> None:
    """Gap to MeLo (encrypted) against training-set size, one panel per dataset, one line per arm, 95% error bars."""
    datasets = list(dict.fromkeys(summary.dataset))
    fig, axes = plt.subplots(1, len(datasets), figsize=(5.5 * len(datasets), 4.6), sharey=True, squeeze=False)
    gap_names = list(dict.fromkeys(summary.gap))
    for ax, dataset in zip(axes[0], datasets, strict=False):
        for i, gap in enumerate(gap_names):
            part = summary[(summary.dataset == dataset) & (summary.gap == gap)].sort_values("size")
            # a small multiplicative offset per arm keeps the error bars apart on the log axis
            shift = 1 + 0.04 * (i - (len(gap_names) - 1) / 2)
            ax.errorbar(part["size"] * shift, part["mean"], yerr=part.ci95.fillna(0), marker="o", capsize=3, label=gap)
        ax.axhline(0, color="grey", linewidth=0.8)
        ax.set_xscale("log")
        sizes = sorted(set(summary["size"]))
        ax.set_xticks(sizes, [str(v) for v in sizes])
        ax.minorticks_off()
        ax.set_xlabel("training images (log scale)")
        ax.set_title(dataset)
    axes[0][0].set_ylabel("test accuracy gap to MeLo (points)")
    # below the panels, so that the legend hides no error bar
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    save_figure(fig, path)


def write_study(table: pd.DataFrame, out: Path, meta: dict) -> None:
    """study.csv (runs), gaps.csv (paired gaps), study.md (the gaps as a table), accuracy.csv (per arm),
    patch_lr_choices.csv, study.png, then meta.json, each atomically: meta.json is removed first and written last,
    so that the tables count only as a whole set."""
    out.mkdir(parents=True, exist_ok=True)
    begin_result_set(out)
    summary = gaps(table)
    write_text(out / "study.csv", table.to_csv(index=False))
    write_text(out / "gaps.csv", summary.to_csv(index=False))
    write_text(
        out / "study.md",
        "Test-accuracy gap to MeLo on encrypted images (points): mean over seeds ± half-width "
        "of the 95% interval; * where a paired t-test gives p < 0.05.\n\n" + gaps_markdown(summary),
    )
    write_text(out / "accuracy.csv", arm_accuracy(table).to_csv())
    write_text(out / "patch_lr_choices.csv", patch_lr_choices(table).to_csv())
    plot_gaps(summary, out / "study.png", f"{meta['backbone']}, encrypted images, {meta['seeds']} seed(s)")
    write_text(out / "meta.json", json.dumps(meta, indent=1, default=str))


def load_study(folder: str | Path) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """(runs, gaps, meta) of a complete study folder; IncompleteResultsError (an EncvitError) naming the folder and
    what is missing when it is unfinished or a table is damaged."""
    runs = load_study_runs(folder)
    return (
        runs,
        read_table(Path(folder) / "gaps.csv", IncompleteResultsError),
        read_json(Path(folder) / "meta.json", IncompleteResultsError),
    )
